"""What a user's console shows: no third-party notice at start-up, no Ray Train report dumps in a run's log."""

from __future__ import annotations

import inspect
import logging
from concurrent.futures import ThreadPoolExecutor

from conftest import REPO, run_job

JOBS = sorted(p.stem for p in (REPO / "jobs").glob("*.py") if p.stem != "__init__")
BNB_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def test_no_job_starts_with_the_bitsandbytes_kernel_notice():
    """peft imports bitsandbytes at start-up, which (on an AVX512-BF16 CPU) tries the Hub for a CPU kernel and
    warns when it cannot have it. Every job's --help, each in its own process, run side by side."""
    with ThreadPoolExecutor(len(JOBS)) as pool:
        results = dict(zip(JOBS, pool.map(lambda job: run_job(job, "--help", timeout=300), JOBS)))
    for job, result in results.items():
        assert result.returncode == 0, (job, result.stderr[-2000:])
        output = result.stdout + result.stderr
        assert "gemm_4bit_forward" not in output and "kernels-community" not in output, (job, output[-2000:])


def test_only_that_bitsandbytes_record_is_dropped(caplog):
    import llava_platform  # noqa: F401  (installs the filter)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning(f"{BNB_NOTICE}: %s. Please make sure you already `pip install kernels`", "offline")
        logger.warning("another bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["another bitsandbytes warning"]


def test_ray_trains_report_dump_is_off_in_the_workers():
    """Ray Train logs "Reporting training result N: TrainingReport(...)" per ray.train.report at INFO, on a logger
    named by its file (not under "ray.train", which RunConfig's LoggingConfig sets); train_worker sets that one to
    WARNING. The first two asserts pin Ray's mechanism: a Ray that changes it fails here, not silently."""
    from ray.train.v2._internal.execution import context

    from llava_platform.train.worker import quiet_report_log, train_worker

    source = inspect.getsource(context.TrainContext._wait_then_report)
    assert "logger.info(" in source and "Reporting training result" in source
    assert context.logger is logging.getLogger(context.__file__)
    assert "quiet_report_log()" in inspect.getsource(train_worker)
    quiet_report_log()
    assert context.logger.getEffectiveLevel() == logging.WARNING
