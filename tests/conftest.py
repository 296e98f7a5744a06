"""Shared fixtures: a tiny random-init model built once per session, its saved checkpoint, images."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# Ray's token authentication, as users run Ray 2.60 (README: RAY_AUTH_MODE=token and a token every node and client
# reads): one token for the test session, in the environment of this process (its in-process drivers) and so of
# every `ray start`, `ray job submit` and job it starts
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))


def make_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic random RGB image."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def run_job(module: str, *args: str, stdin: str | None = None, timeout: int = 300, env: dict[str, str] | None = None):
    """Run `python -m jobs.<module>` from the repo root, as a user would (`env`: more environment, e.g. RAY_ADDRESS)."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", f"jobs.{module}", *args],
        cwd=REPO, input=stdin, capture_output=True, text=True, timeout=timeout, env=ray_env(**(env or {})),
    )  # fmt: skip


RAY = str(Path(sys.executable).parent / "ray")


def ray_job_submit(cluster, job_id: str, command: list[str], *flags: str):
    """`ray job submit --working-dir <repo> -- <command>` to the cluster, as a user submits a job."""
    import subprocess
    import time

    for _ in range(3):  # a loaded head may not have its job agent up yet ("try again later"): as a user would
        submit = subprocess.run([RAY, "job", "submit", "--address", cluster.dashboard, "--submission-id", job_id, *flags,
                                 "--working-dir", str(REPO), "--", *command],
                                env=ray_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
        if "No available agent to submit job" not in submit.stderr:
            break
        time.sleep(20)
    return submit


def stop_job_at_step(cluster, job_id: str, step: int) -> str:
    """Follow a submitted training job's logs (`ray job logs --follow`) until it logs `[train] step N/...` with
    N >= step, then `ray job stop` it, as a user stops a job; returns what was logged."""
    import re
    import subprocess

    logged = []
    follow = subprocess.Popen([RAY, "job", "logs", job_id, "--follow", "--address", cluster.dashboard], env=ray_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    for line in follow.stdout:
        logged.append(line)
        if (found := re.search(r"\[train\] step (\d+)/", line)) and int(found[1]) >= step:
            stop = subprocess.run([RAY, "job", "stop", job_id, "--address", cluster.dashboard], env=ray_env(),
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
            assert stop.returncode == 0, stop.stdout + stop.stderr
            break
    follow.kill()
    follow.wait()
    return "".join(logged)


def plain_tokenizer():
    """A byte-level tokenizer with no <image> and no pad token, as a hub LLM's would be."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    tok.train_from_iterator(["hello world, what is it?"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def tiny_bundle():
    from llava_platform.config import ModelSpec
    from llava_platform.model import build_model

    torch.manual_seed(0)
    return build_model(ModelSpec(preset="tiny"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_bundle, tmp_path_factory) -> Path:
    from llava_platform.model import save_checkpoint

    return save_checkpoint(tiny_bundle, tmp_path_factory.mktemp("ckpt") / "tiny")


def lora_model(bundle, **lora_fields):
    """A copy of `bundle`'s model with LoRA r 4 on its LLM, the adapters and the projector's trained copy set to
    random values (B starts at zero: fresh adapters change nothing)."""
    import copy

    from llava_platform.config import LoraSpec
    from llava_platform.model.lora import apply_lora

    model = apply_lora(copy.deepcopy(bundle.model), LoraSpec(r=4, alpha=8, dropout=0.0, **lora_fields))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
            if "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.05)  # the trained projector copy differs from the original
    return model.eval()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayCluster:
    """A real Ray cluster on this machine, started the way users start one: `ray start --head`, then
    `ray start --address` for each extra node. Each `ray start --block` runs in its own process
    group, so stopping the cluster signals exactly the processes this fixture started."""

    # Every node's ports are its own, chosen free as it binds them (0); the head's are picked free here. Ray's fixed
    # defaults (the dashboard agent's 52365, the client server's 10001, workers' 10002-19999) would collide with
    # another node, test cluster or user's Ray on this machine, and a node whose agent cannot bind runs without it
    # ("No available agent to submit job").
    NODE_PORTS = ["--node-manager-port=0", "--object-manager-port=0", "--min-worker-port=0", "--max-worker-port=0",
                  "--dashboard-agent-listen-port=0", "--dashboard-agent-grpc-port=0", "--metrics-export-port=0",
                  "--runtime-env-agent-port=0"]  # fmt: skip

    def __init__(self, root: Path, nodes: int = 2, cpus_per_node: int = 4):
        import subprocess

        import tempfile

        self.root = root
        # Ray's unix sockets live under --temp-dir and their paths must stay within 107 bytes:
        # pytest's tmp folders can be too deep, so the session folder goes to a short /tmp/rayXXXX. Each node has its
        # own, as separate machines do: nodes sharing one unpack a job's working_dir into one folder, where a job's
        # driver was seen losing its files (jobs/ gone) while it ran.
        self.temp_dirs = [Path(tempfile.mkdtemp(prefix="ray", dir="/tmp")) for _ in range(nodes)]
        self.temp_dir = self.temp_dirs[0]  # the head's
        self.gcs = f"127.0.0.1:{free_port()}"
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        # stop() signals every process at once: a node would spend 30 s trying to drain itself through a GCS
        # that is exiting too (Ray 2.60's SIGTERM drain), so it exits at once. Metrics reach the nodes' Prometheus
        # export every second (default 10 s), so the serving tests read them without long waits.
        self.env = ray_env(RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0", RAY_metrics_report_interval_ms="1000")
        self.processes: list[subprocess.Popen] = []
        head = ["--head", f"--port={self.gcs.split(':')[1]}", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard.rsplit(':', 1)[1]}", f"--ray-client-server-port={free_port()}",
                f"--temp-dir={self.temp_dir}", "--include-dashboard=true"]  # fmt: skip
        self._start(head, cpus_per_node, "head")
        for n in range(1, nodes):
            self._start([f"--address={self.gcs}", f"--temp-dir={self.temp_dirs[n]}"], cpus_per_node, f"node{n}")

    def _start(self, args: list[str], cpus: int, name: str) -> None:
        import subprocess
        import time

        ray = str(Path(sys.executable).parent / "ray")
        log = open(self.root / f"{name}.log", "w")
        process = subprocess.Popen([ray, "start", "--block", "--disable-usage-stats", f"--num-cpus={cpus}", *self.NODE_PORTS,
                                    *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.processes.append(process)
        deadline = time.time() + 120
        while "--block" not in (self.root / f"{name}.log").read_text():  # printed once the node is up
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray start ({name}) failed:\n{(self.root / f'{name}.log').read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        import shutil
        import signal

        for process in reversed(self.processes):
            try:
                os.killpg(process.pid, signal.SIGTERM)  # the group of the `ray start` this fixture launched
                process.wait(timeout=30)
            except (ProcessLookupError, TimeoutError):
                pass
            except Exception:
                os.killpg(process.pid, signal.SIGKILL)
        for temp_dir in self.temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)


def ray_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would have: the venv's tools first on PATH, the session's Ray token."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory, s3_server):
    """The shared two-node cluster; started after the S3 server, so its nodes have the store's credentials in their
    environment, as a cluster's nodes have theirs."""
    cluster = RayCluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def ray_client(ray_cluster):
    """This test process as a driver of the shared cluster, for in-process calls of the library's Ray code."""
    import ray

    ray.init(address=ray_cluster.gcs, logging_level="WARNING", log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    yield ray_cluster
    ray.shutdown()


class S3Server:
    """A local S3-compatible server (moto's), for object-store tests: `python -m moto.server` in its own
    process group. `env` holds the credentials a user's shell would export; `storage` reaches it."""

    BUCKET = "llava"

    def __init__(self, root: Path):
        import subprocess
        import time
        import urllib.request

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_REGION": "us-east-1"}
        log = open(root / "moto.log", "w")
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint, timeout=2)
                break
            except OSError:
                if self.process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"moto server did not start:\n{(root / 'moto.log').read_text()[-2000:]}")
                time.sleep(0.3)

        os.environ.update(self.env)  # this process (and a local Ray it starts) reaches the store like a user's shell
        import boto3

        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                   aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                                   aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
        self.client.create_bucket(Bucket=self.BUCKET)

    @property
    def storage(self):
        from llava_platform.config import StorageSpec
        from llava_platform.storage import Storage

        return Storage(StorageSpec(endpoint_url=self.endpoint))

    def upload_folder(self, folder: Path, prefix: str) -> str:
        """Every file under `folder` to s3://llava/<prefix>/...; returns that URI."""
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            self.client.upload_file(str(path), self.BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")
        return f"s3://{self.BUCKET}/{prefix}"

    def stop(self) -> None:
        import signal

        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except (ProcessLookupError, Exception):
            pass


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()
