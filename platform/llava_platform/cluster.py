"""Which Ray a job runs on, chosen without waiting on a cluster that is gone.

    RAY_ADDRESS=host:port (`ray job submit` sets it)  -> that cluster; nothing answering there is a ConnectionError
                                                         naming it, within seconds
    RAY_ADDRESS unset, and the cluster this machine   -> join it (RAY_ADDRESS=auto: the same, and an error when
      started last answers                               there is none)
    RAY_ADDRESS unset, no such cluster, or a stale    -> start a local Ray (as RAY_ADDRESS=local always does)
      record of one

"The cluster this machine started last" is Ray's own record of it: `ray start --head` writes its GCS address
to <RAY_TMPDIR, else TMPDIR, else /tmp>/ray/ray_current_cluster and `ray stop` deletes it, but a cluster that
died leaves it behind. A plain `ray.init()` then connects to the dead address and retries for more than ten
minutes ("Failed to connect to GCS"); here the address is probed first (a TCP connect, refused at once by a
closed port) and a stale record starts a local Ray instead (`address="local"`: the record is not read again).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

__all__ = ["RayTarget", "choose_ray", "connect", "recorded_cluster", "accepts_connections", "quiet_ray_data"]

PROBE_TIMEOUT_S = 5.0  # a live GCS accepts a connection in milliseconds; a remote one over a slow network in seconds


@dataclass(frozen=True)
class RayTarget:
    address: str  # what ray.init gets: a GCS host:port, ray://host:port, or "local" (start a new Ray)
    reason: str  # why, in words
    stale_record: bool = False  # Ray's record names a cluster that is gone (said on the console: ray.init would not)


def recorded_cluster() -> str | None:
    """The GCS address in Ray's record of the cluster this machine started last (None when there is no record),
    read as ray.init reads it."""
    from ray._private.services import find_bootstrap_address

    return find_bootstrap_address(None) or None


def _record_file() -> str:
    from ray._common.utils import get_ray_address_file

    return get_ray_address_file(None)


def accepts_connections(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts a TCP connection at host:port (a ray:// prefix is allowed) within timeout_s."""
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        return True  # not host:port (e.g. a bare cluster name Ray resolves itself): Ray's own error is the clear one
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def choose_ray(environ: dict[str, str] | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> RayTarget:
    """The Ray to run on (see the module docstring); raises ConnectionError for a RAY_ADDRESS nothing answers at.
    `environ` is where RAY_ADDRESS is read (default os.environ); Ray's record is found as Ray finds it."""
    environ = os.environ if environ is None else environ
    named = environ.get("RAY_ADDRESS", "").strip()
    if named == "local":
        return RayTarget("local", "RAY_ADDRESS=local: a new local Ray")
    if named and named != "auto":
        if not accepts_connections(named, timeout_s):
            raise ConnectionError(
                f"RAY_ADDRESS={named}: no Ray cluster answers there (nothing accepted a connection within "
                f"{timeout_s:.0f}s). Start it (`ray start --head` on that machine), fix the address, or unset "
                "RAY_ADDRESS to run on this machine's cluster or a new local Ray"
            )
        return RayTarget(named, f"the cluster RAY_ADDRESS names ({named})")
    recorded = recorded_cluster()
    if recorded is not None and accepts_connections(recorded, timeout_s):
        return RayTarget(recorded, f"this machine's current cluster ({recorded}, from {_record_file()})")
    if named == "auto":  # Ray's "auto": an existing cluster or an error, never a new one
        found = f"a stale record of {recorded}" if recorded else "no record"
        raise ConnectionError(
            f"RAY_ADDRESS=auto: no running cluster on this machine ({_record_file()}: {found}). Start one with "
            "`ray start --head`, name one in RAY_ADDRESS, or unset RAY_ADDRESS to start a local Ray"
        )
    if recorded is not None:
        return RayTarget("local", f"a new local Ray: the cluster recorded in {_record_file()} ({recorded}) is gone",
                         stale_record=True)
    return RayTarget("local", "a new local Ray: no cluster is recorded on this machine")


def connect(timeout_s: float = PROBE_TIMEOUT_S) -> RayTarget:
    """ray.init on the Ray choose_ray picks (nothing, if this process is connected already); returns the choice."""
    import ray

    if ray.is_initialized():
        return RayTarget(ray.get_runtime_context().gcs_address, "this process is connected already")
    target = choose_ray(timeout_s=timeout_s)
    if target.stale_record:
        print(f"[ray] {target.reason}", flush=True)
    ray.init(address=target.address)
    return target


def quiet_ray_data() -> None:
    """No Ray Data progress bars or start-of-execution lines on a job's console (the jobs print their own progress);
    set in the driver's DataContext, which Ray carries to the tasks and trainers it starts."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
