"""docs/configuration.md is what the specs' field descriptions say today, and every key has one."""

import subprocess
import sys

from conftest import REPO
from llava_platform.config import TrainJobSpec
from llava_platform.config_reference import render, undocumented_fields

REFERENCE = REPO / "docs" / "configuration.md"


def test_the_reference_is_current():
    assert REFERENCE.read_text() == render(), (
        "docs/configuration.md is stale: run python -m llava_platform.config_reference --out docs/configuration.md"
    )


def test_every_key_is_described_and_listed():
    assert undocumented_fields() == []
    text = REFERENCE.read_text()
    for section in ("model", "model.components", "model.lora", "data", "train", "scaling", "run", "storage"):
        assert f"### `{section}:`" in text, section
    for key, field in TrainJobSpec.model_fields["train"].annotation.model_fields.items():
        assert f"| `{key}` |" in text, key
    assert "| `max_steps` | integer or null (> 0) | null |" in text
    assert "| `strategy` | one of `ddp`, `zero2`, `zero3`, `zero3_offload` | `ddp` |" in text
    assert "| `path` | string | **required** |" in text


def test_the_command_writes_the_reference(tmp_path):
    out = tmp_path / "configuration.md"
    subprocess.run([sys.executable, "-m", "llava_platform.config_reference", "--out", str(out)], check=True, cwd=REPO,
                   capture_output=True)  # fmt: skip
    assert out.read_text() == render()
