"""The command-line jobs, run as users run them: python -m jobs.X from the repo root."""

import pytest
import torch
from torch import nn

from conftest import REPO, make_image, run_job
from llava_platform.config import SamplingSpec
from llava_platform.data.templates import Message
from llava_platform.inference.engine import GenerationRequest, InferenceEngine
from llava_platform.model import load_checkpoint


def test_build_model_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "init"
    result = run_job("build_model", "--config", "jobs/configs/tiny.yaml", "--out", str(out), "model.image_mode=anyres")
    assert result.returncode == 0, result.stderr
    assert "LlavaNextForConditionalGeneration" in result.stdout and "template mistral_instruct" in result.stdout
    assert load_checkpoint(out).spec.image_mode == "anyres"


def test_build_model_bad_spec_is_one_clear_line(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("model:\n  preset: tiny\n  dtyp: bfloat16\n")
    result = run_job("build_model", "--config", str(spec), "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: {spec}: model.dtyp: unknown key; did you mean 'dtype'?" in result.stderr
    assert not (tmp_path / "x").exists()


def test_chat_one_shot_and_interactive(tiny_checkpoint, tmp_path):
    image_path = tmp_path / "scene.png"
    make_image(64, 64, seed=5).save(image_path)
    engine = InferenceEngine(load_checkpoint(tiny_checkpoint))
    sampling = SamplingSpec(max_new_tokens=8)
    first_q, second_q = "What shape is at the top left?", "And at the bottom right?"
    messages = [Message("user", "<image>\n" + first_q)]
    [first] = engine.generate([GenerationRequest(messages, [make_image(64, 64, seed=5)])], sampling)

    result = run_job("chat", "--checkpoint", str(tiny_checkpoint), "--image", str(image_path), "--prompt", first_q, "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == first.text.strip() and first.text

    messages += [Message("assistant", first.text), Message("user", second_q)]
    [second] = engine.generate([GenerationRequest(messages, [make_image(64, 64, seed=5)])], sampling)
    result = run_job("chat", "--checkpoint", str(tiny_checkpoint), "--image", str(image_path), "--max-new-tokens", "8",
                     stdin=f"{first_q}\n{second_q}\n")  # fmt: skip
    assert result.returncode == 0, result.stderr
    replies = [line.split("ASSISTANT: ", 1)[1] for line in result.stdout.splitlines() if "ASSISTANT: " in line]
    assert replies == [first.text, second.text]


@pytest.mark.parametrize("flag, layer", [("--load-4bit", "Linear4bit"), ("--load-8bit", "Linear8bitLt")])
def test_chat_loads_the_llm_quantized(tiny_checkpoint, tmp_path, flag, layer):
    """--load-4bit / --load-8bit as in LLaVA's CLI: the LLM's linears are bitsandbytes', the rest float16, and chat
    answers with them, with no bitsandbytes notice on the console."""
    pytest.importorskip("bitsandbytes")
    from jobs.chat import build_parser, load_engine

    image_path = tmp_path / "scene.png"
    make_image(64, 64, seed=5).save(image_path)
    question = "What shape is at the top left?"
    args = ["--checkpoint", str(tiny_checkpoint), "--image", str(image_path), "--prompt", question, "--max-new-tokens", "8", flag]
    engine = load_engine(build_parser().parse_args(args))
    kinds: dict[str, set[str]] = {}
    for name, module in engine.model.named_modules():
        if isinstance(module, nn.Linear):  # lm_head, model.<part>.*
            kinds.setdefault(name.split(".")[1] if "." in name else name, set()).add(type(module).__name__)
    assert kinds == {"language_model": {layer}, "vision_tower": {"Linear"}, "multi_modal_projector": {"Linear"}, "lm_head": {"Linear"}}
    assert engine.model.dtype == torch.float16  # what int8 matmul takes: from float32 it warns at every layer and token
    request = GenerationRequest([Message("user", "<image>\n" + question)], [make_image(64, 64, seed=5)])
    [expected] = engine.generate([request], SamplingSpec(max_new_tokens=8))

    result = run_job("chat", *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected.text.strip() and expected.text
    assert "MatMul8bitLt" not in result.stderr and "kernels-community" not in result.stderr, result.stderr[-2000:]


def test_chat_refuses_both_quantizations(capsys):
    from jobs.chat import build_parser

    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(["--checkpoint", "c", "--image", "i", "--load-4bit", "--load-8bit"])
    assert exit.value.code == 2 and "argument --load-8bit: not allowed with argument --load-4bit" in capsys.readouterr().err


def test_chat_missing_image_is_a_clear_error(tiny_checkpoint, tmp_path):
    result = run_job("chat", "--checkpoint", str(tiny_checkpoint), "--image", str(tmp_path / "none.png"), "--prompt", "hi")
    assert result.returncode == 2 and "image not found" in result.stderr and "Traceback" not in result.stderr


def test_every_job_documents_its_launch_command():
    for job in sorted((REPO / "jobs").glob("*.py")):
        if job.name == "__init__.py":
            continue
        doc = job.read_text().split('"""')[1]
        assert f"python -m jobs.{job.stem}" in doc, f"{job.name}: docstring must show the launch command"
