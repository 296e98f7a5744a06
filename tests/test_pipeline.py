"""jobs.pipeline as users run it, `ray job submit` to the shared `ray start --head` cluster: stage 1, stage 2 and the
evaluation run; under the threshold nothing is served (exit 1); the same job again with a threshold the model meets
trains nothing again, answers nothing again, deploys, and the openai client gets the model's answer."""

from __future__ import annotations

import base64
import subprocess
import time

import openai
import pytest
import yaml

from conftest import REPO, free_port, ray_env, ray_job_submit
from llava_platform.config import SamplingSpec
from llava_platform.data.images import load_image
from llava_platform.data.synthetic import generate
from llava_platform.data.templates import Message
from llava_platform.inference.engine import GenerationRequest, InferenceEngine
from serving import SERVE

pytestmark = pytest.mark.slow

STAGE = ["train.max_steps=6", "train.global_batch_size=16", "train.micro_batch_size=16", "train.log_every_steps=3",
         "train.checkpoint_every_steps=3", "data.preprocess_workers=1"]  # fmt: skip


def test_the_pipeline_serves_only_a_model_that_passes_and_resumes_every_step(ray_cluster, tmp_path):
    data = generate(tmp_path / "data", num_train=64, num_test=12, seed=7)
    runs = tmp_path / "runs"
    port = free_port()
    serve_config = yaml.safe_load((REPO / "serve_apps" / "tiny.yaml").read_text())
    serve_config["http_options"] = {"host": "127.0.0.1", "port": port}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(serve_config))
    stage = {"pretrain": data.pretrain, "finetune": data.finetune}
    spec = {
        **{name: {"config": f"jobs/configs/tiny_{name}.yaml",
                  "overrides": [f"data.path={path}", f"data.image_folder={data.image_folder}",
                                f"train.output_dir={runs / name}", f"run.storage_path={runs / 'ray'}",
                                f"run.name=pipeline-{name}", *STAGE]} for name, path in stage.items()},
        "evaluate": {"config": "jobs/configs/eval/scenes.yaml", "metric": "accuracy", "threshold": 1.01,
                     "overrides": [f"batch.input={data.questions}", f"batch.image_folder={data.image_folder}",
                                   f"batch.output={runs / 'eval'}"]},
        "serve": {"config": str(tmp_path / "serve.yaml")},
    }  # fmt: skip
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(spec))
    command = ["python", "-m", "jobs.pipeline", "--config", str(tmp_path / "pipeline.yaml")]

    failed = ray_job_submit(ray_cluster, f"pipeline-1-{int(time.time())}", command)
    assert failed.returncode != 0 and "[pipeline] not served: accuracy" in failed.stdout, failed.stdout[-3000:]
    assert "< evaluate.threshold 1.01" in failed.stdout and (runs / "finetune" / "final" / "llava_platform.yaml").exists()
    url = f"http://127.0.0.1:{port}/v1"
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=10)
    with pytest.raises(openai.APIConnectionError):  # nothing deployed
        client.models.list()

    passed = ray_job_submit(ray_cluster, f"pipeline-2-{int(time.time())}", [*command, "evaluate.threshold=0"])
    try:
        assert passed.returncode == 0, passed.stdout[-3000:]
        out = passed.stdout
        assert "[pipeline] pretrain: done before" in out and "[pipeline] finetune: done before" in out
        assert "12 rows already written" in out and "[batch] done: 0 rows" in out  # the evaluation resumed: none asked again
        assert "[pipeline] served:" in out and "as model 'llava-tiny'" in out
        image = data.image_folder / "images" / "test_00000.png"
        content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," +
                                                               base64.b64encode(image.read_bytes()).decode()}},
                   {"type": "text", "text": "What color is the circle?"}]  # fmt: skip
        reply = client.chat.completions.create(model="llava-tiny", messages=[{"role": "user", "content": content}],
                                               max_tokens=8)  # fmt: skip
    finally:
        subprocess.run([SERVE, "shutdown", "--yes", "--address", ray_cluster.dashboard], env=ray_env(), cwd=REPO,
                       capture_output=True, timeout=120)  # fmt: skip
    engine = InferenceEngine.from_checkpoint(runs / "finetune" / "final")
    [expected] = engine.generate([GenerationRequest([Message("user", "<image>\nWhat color is the circle?")],
                                                    [load_image(image)])], SamplingSpec(max_new_tokens=8))  # fmt: skip
    assert reply.choices[0].message.content == expected.text


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("*_pipeline.yaml")), ids=lambda p: p.name)
def test_every_step_of_a_shipped_pipeline_is_a_valid_spec(path):
    """What each step will load, loaded now: the stages' and the evaluation's specs with their overrides (and the
    model the pipeline sets), the Serve config's args."""
    from llava_platform.config import TrainJobSpec, load
    from llava_platform.eval.spec import EvalJobSpec
    from llava_platform.pipeline import PipelineSpec
    from llava_platform.serve.spec import parse_app_args

    spec = load(path, PipelineSpec)
    load(REPO / spec.pretrain.config, TrainJobSpec, spec.pretrain.overrides)
    stage2 = load(REPO / spec.finetune.config, TrainJobSpec, [*spec.finetune.overrides, "model.checkpoint=s3://b/final"])
    assert stage2.train.stage == "finetune" and stage2.model.checkpoint == "s3://b/final"
    evaluation = load(REPO / spec.evaluate.config, EvalJobSpec, [*spec.evaluate.overrides, "model.checkpoint=x"])
    assert spec.evaluate.metric in {"accuracy", "f1", "relative", "circular_accuracy"} and evaluation.task.name
    serve = yaml.safe_load((REPO / spec.serve.config).read_text())
    assert parse_app_args(serve["applications"][0]["args"]).models
