"""What the experiments' tests share: the repository root, `python -m` runs from it as a user runs them,
and the check that a written set is one the platform trains on. (tests/conftest.py is the product's;
this package's modules import from here as experiments.tests.conftest, so the two never clash.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY_BASE = REPO / "jobs" / "assets" / "tiny-base"


def run_module(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m <module> ARGS` from the repo root; stdout and stderr captured. The venv's tools first on PATH
    and one Ray auth mode, as tests/conftest.py's ray_env gives the product's jobs (jobs.demo starts a local Ray)."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def encode_all(folder: Path, name: str = "finetune.json") -> int:
    """Every record of folder/name parsed and encoded as a training worker from the tiny base encodes it (its
    processor and template, the tiny specs' max_length 256): each parses, its image loads, and it fits whole
    with answer tokens to learn (what jobs.validate_data reports per record). Returns the number of records."""
    from llava_platform.data.records import parse_record
    from llava_platform.data.samples import SampleEncoder
    from llava_platform.model import load_checkpoint

    bundle = load_checkpoint(TINY_BASE)
    encoder = SampleEncoder(bundle.processor, bundle.template, folder, max_length=256)
    raw = json.loads((folder / name).read_text())
    for index, record in enumerate(raw):
        sample = encoder.encode(parse_record(record, index))
        assert not sample.truncated and sample.num_trained > 0, (folder / name, sample.id)
    return len(raw)
