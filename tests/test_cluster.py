"""Which Ray a job runs on (llava_platform.cluster), and test clusters that run side by side.

Ray's record of "the cluster this machine started last" is <RAY_TMPDIR>/ray/ray_current_cluster: every test
points RAY_TMPDIR at a folder of its own, so the machine's real record (/tmp/ray) is never read or written.
Anything that starts or joins a Ray runs in a subprocess: this process's own Ray state stays untouched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, RayCluster, free_port, ray_env, run_job
from llava_platform.cluster import choose_ray

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture
def ray_tmpdir(monkeypatch):
    """A RAY_TMPDIR of this test's own (short: Ray's socket paths under it must stay within 107 bytes), holding
    Ray's record folder; `record(address)` writes the record as `ray start --head` does."""
    root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    (root / "ray").mkdir()
    monkeypatch.setenv("RAY_TMPDIR", str(root))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    class Tmp:
        path = root

        @staticmethod
        def record(address: str) -> None:
            (root / "ray" / "ray_current_cluster").write_text(address)

    yield Tmp
    shutil.rmtree(root, ignore_errors=True)


def dead_address() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there once free_port's socket is closed


# --------------------------------------------------------------------------- the choice, without starting Ray


def test_no_record_starts_a_local_ray(ray_tmpdir):
    target = choose_ray()
    assert target.address == "local" and not target.stale_record


def test_a_stale_record_is_not_waited_on(ray_tmpdir):
    dead = dead_address()
    ray_tmpdir.record(dead)
    started = time.perf_counter()
    target = choose_ray()
    assert time.perf_counter() - started < 30  # (importing Ray included) not the ten-minute wait on a dead GCS
    assert target.address == "local" and target.stale_record
    assert dead in target.reason and "is gone" in target.reason


def test_an_unreachable_ray_address_is_a_clear_error(ray_tmpdir):
    dead = dead_address()
    with pytest.raises(ConnectionError, match=rf"RAY_ADDRESS={dead}: no Ray cluster answers there.*unset RAY_ADDRESS"):
        choose_ray({"RAY_ADDRESS": dead})
    ray_tmpdir.record(dead)
    with pytest.raises(ConnectionError, match=r"RAY_ADDRESS=auto: no running cluster on this machine .*a stale record of"):
        choose_ray({"RAY_ADDRESS": "auto"})
    assert choose_ray({"RAY_ADDRESS": "local"}).address == "local"


def test_a_job_given_an_unreachable_ray_address_stops_at_once_with_one_line(tmp_path):
    dead = dead_address()
    started = time.perf_counter()
    result = run_job("validate_data", "--data", str(tmp_path / "records.json"), env={"RAY_ADDRESS": dead}, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"error: RAY_ADDRESS={dead}: no Ray cluster answers there" in result.stderr
    assert time.perf_counter() - started < 60  # the import time; ray.init would retry for over ten minutes


# --------------------------------------------------------------------------- real clusters


@pytest.fixture(scope="module")
def two_clusters(tmp_path_factory):
    """Two one-node test clusters at once, each stopped by its own stop()."""
    first = RayCluster(tmp_path_factory.mktemp("first"), nodes=1, cpus_per_node=1)
    try:
        second = RayCluster(tmp_path_factory.mktemp("second"), nodes=1, cpus_per_node=1)
    except Exception:
        first.stop()
        raise
    yield first, second
    second.stop()
    first.stop()


@pytest.mark.slow
def test_two_test_clusters_run_jobs_side_by_side(two_clusters):
    for n, cluster in enumerate(two_clusters):
        for _ in range(3):  # a just-started head's job agent may not have registered yet
            submit = subprocess.run([RAY, "job", "submit", "--address", cluster.dashboard, "--submission-id",
                                     f"side-by-side-{n}-{int(time.time())}", "--", "python", "-c", f"print('cluster {n} ran')"],
                                    env=ray_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
            if "No available agent to submit job" not in submit.stderr:
                break
            time.sleep(10)
        assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-2000:]
        assert f"cluster {n} ran" in submit.stdout


CONNECT = """
import json, time
import ray
from llava_platform.cluster import connect
started = time.perf_counter()
target = connect()
node = ray._private.worker._global_node
print(json.dumps({"address": target.address, "seconds": time.perf_counter() - started,
                  "session_dir": node.get_session_dir_path()}))
ray.shutdown()
"""


def connect_in_subprocess(ray_tmpdir) -> tuple[dict, str]:
    """connect() in a fresh process with this test's RAY_TMPDIR and no RAY_ADDRESS: (what it printed last, stdout)."""
    env = ray_env(RAY_TMPDIR=str(ray_tmpdir.path))
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-c", CONNECT], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout


@pytest.mark.slow
def test_a_job_joins_the_cluster_this_machine_started_last(two_clusters, ray_tmpdir):
    _, second = two_clusters
    # Ray's own record, as `ray start --head --temp-dir` wrote it for this cluster
    ray_tmpdir.record((second.temp_dir / "ray_current_cluster").read_text())
    assert choose_ray().address.endswith(second.gcs.rsplit(":", 1)[1])
    joined, _ = connect_in_subprocess(ray_tmpdir)
    assert Path(joined["session_dir"]).is_relative_to(second.temp_dir), joined  # that cluster's session, not a new one


@pytest.mark.slow
def test_a_stale_record_starts_a_local_ray_in_seconds(ray_tmpdir):
    dead = dead_address()
    ray_tmpdir.record(dead)
    started = time.perf_counter()
    local, stdout = connect_in_subprocess(ray_tmpdir)
    assert time.perf_counter() - started < 120 and local["seconds"] < 90, local  # not the ten-minute wait on `dead`
    assert local["address"] == "local" and Path(local["session_dir"]).is_relative_to(ray_tmpdir.path / "ray"), local
    assert f"[ray] a new local Ray: the cluster recorded in {ray_tmpdir.path}/ray/ray_current_cluster ({dead}) is gone" in stdout
