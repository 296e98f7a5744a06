"""What a training job checks about its cluster before it starts anything, and what it records of its code.

Room for preprocessing: Ray Data's tasks decode and tokenise on CPUs next to the training workers. If
the workers reserve every CPU the cluster has, the tasks never start and the job waits forever behind
Ray Data's "cluster resources are not enough" warning. A cluster that cannot grow is refused before
training, naming the fix; on an autoscaling one the job says what it waits for.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import ray

from llava_platform.config import TrainJobSpec

__all__ = ["check_preprocessing_room", "code_version"]


def _most_cpus() -> float | None:
    """CPUs the autoscaler may grow the cluster to (its node types' max counts), or None: it cannot grow.

    Read from the cluster config the autoscaler (ray up, KubeRay) publishes; Ray Data reads the same.
    """
    try:
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config()
    except Exception:  # no autoscaler has published a config (ray start by hand), or an older layout
        return None
    return float(most["CPU"]) if most and most.get("CPU") else None


def check_preprocessing_room(spec: TrainJobSpec, log=print) -> None:
    """Raise ValueError if the training workers leave no CPU for one preprocessing task on a cluster that cannot
    grow; on one that can, say what the job waits for."""
    workers, per_worker = spec.scaling.num_workers, spec.scaling.cpus_per_worker
    held, task = workers * per_worker, spec.data.preprocess_cpus
    now, most = float(ray.cluster_resources().get("CPU", 0)), _most_cpus()
    if most is None and now - held < task:
        raise ValueError(
            f"scaling: {workers} training workers x scaling.cpus_per_worker={per_worker:g} reserve {held:g} of this Ray "
            f"cluster's {now:g} CPUs, which leaves no room for the data preprocessing tasks (data.preprocess_cpus="
            f"{task:g} each), and the cluster cannot grow (no autoscaler): the job would wait forever. Lower "
            f"scaling.cpus_per_worker (e.g. {max(per_worker / 2, 0.1):g}) or data.preprocess_cpus (e.g. 0.5), or add "
            "CPUs to the cluster"
        )
    if most is not None and most - held < task:
        raise ValueError(
            f"scaling: {workers} training workers x scaling.cpus_per_worker={per_worker:g} reserve {held:g} CPUs and this "
            f"Ray cluster grows to {most:g} at most, which leaves no room for the data preprocessing tasks "
            f"(data.preprocess_cpus={task:g} each); lower scaling.cpus_per_worker or data.preprocess_cpus, or allow "
            "more CPU nodes in the cluster spec"
        )
    if most is not None and now - held < task:
        log(f"[data] the training workers will hold {held:g} of the cluster's {now:g} CPUs: their preprocessing tasks "
            f"(data.preprocess_cpus={task:g} each) wait for the autoscaler to add CPU nodes (up to {most:g} CPUs)")  # fmt: skip


def code_version() -> dict[str, str | bool | None]:
    """The platform's version and, from a git checkout, its commit (and whether it had uncommitted changes);
    LLAVA_PLATFORM_GIT_COMMIT names it where the code was installed without git (a container image)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("llava-platform")
    except PackageNotFoundError:
        package = None
    commit, dirty = os.environ.get("LLAVA_PLATFORM_GIT_COMMIT"), None
    repo = Path(__file__).resolve().parents[3]
    if commit is None and (repo / ".git").exists():
        git = ["git", "-C", str(repo)]
        try:
            commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
            dirty = bool(subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                        text=True, check=True).stdout.strip())  # fmt: skip
        except (OSError, subprocess.CalledProcessError):
            commit = None
    return {"package": package, "git_commit": commit, "git_dirty": dirty}
