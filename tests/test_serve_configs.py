"""The shipped Serve configs pass Serve's schema and the args spec; misspelt keys stop a deploy with one line."""

from pathlib import Path

import pytest
import yaml

from conftest import REPO
from llava_platform.config import ConfigError
from llava_platform.serve.config_check import check_serve_config
from llava_platform.serve.spec import parse_app_args

SHIPPED = sorted((REPO / "serve_apps").glob("*.yaml"))


def test_the_four_configs_are_shipped():
    assert {p.name for p in SHIPPED} >= {"tiny.yaml", "llava-1.5-7b.yaml", "llava-1.5-13b-4bit.yaml", "llava-next-7b.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_is_valid(path):
    [spec] = check_serve_config(path)
    model = spec.models[0]
    if path.name != "tiny.yaml":  # GPU configs: a GPU per model replica, autoscaling, an API key, the template named
        assert spec.model_deployment.num_gpus == 1 and spec.model_deployment.autoscaling is not None
        assert spec.auth.api_key_env == "LLAVA_API_KEY" and model.template == "vicuna_v1"
        assert model.dtype in ("bfloat16", "float16")
    if path.name == "llava-1.5-7b.yaml":
        autoscaling = spec.model_deployment.autoscaling
        assert (autoscaling.min_replicas, autoscaling.max_replicas, model.dtype) == (1, 4, "bfloat16")
    if path.name == "llava-1.5-13b-4bit.yaml":
        assert model.quantization == "4bit"
    if path.name == "tiny.yaml":
        assert model.checkpoint == "jobs/assets/tiny-base" and spec.model_deployment.num_gpus == 0
        assert (REPO / model.checkpoint / "model.safetensors").exists()


def edited(tmp_path: Path, edit) -> Path:
    config = yaml.safe_load((REPO / "serve_apps" / "tiny.yaml").read_text())
    edit(config)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["applications"][0]["args"]["model_deployment"].update(autoscaling={"min_replica": 1}),
     "applications[0].args: model_deployment.autoscaling.min_replica: unknown key; did you mean 'min_replicas'?"),
    (lambda c: c["applications"][0]["args"]["batching"].update(max_batch=4),
     "applications[0].args: batching.max_batch: unknown key; did you mean 'max_batch_size'?"),
    (lambda c: c["applications"][0]["args"]["models"][0].update(dtype="fp16"),
     "applications[0].args: models.0.dtype: Input should be 'float32', 'bfloat16' or 'float16'"),
    (lambda c: c["applications"][0].update(deployments=[{"name": "LlavaModel",
                                                          "autoscaling_config": {"target_ongoing_request": 4}}]),
     "autoscaling_config.target_ongoing_request: unknown key (Serve would ignore it); did you mean 'target_ongoing_requests'?"),
    (lambda c: c.update(aplications=c.pop("applications")), "(Serve's config schema)"),
])  # fmt: skip
def test_a_bad_key_is_one_line_naming_it(tmp_path, edit, message):
    with pytest.raises(ConfigError) as error:
        check_serve_config(edited(tmp_path, edit))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_the_builder_refuses_what_the_check_refuses():
    from llava_platform.serve.app import build_app

    with pytest.raises(ConfigError, match="model_deployment.autoscaling.max_replica: unknown key; did you mean 'max_replicas'"):
        build_app({"models": [{"name": "m", "checkpoint": "x"}], "model_deployment": {"autoscaling": {"max_replica": 2}}})


def test_spec_consistency_errors():
    base = {"models": [{"name": "m", "checkpoint": "x"}]}
    with pytest.raises(ConfigError, match="names must be unique"):
        parse_app_args({"models": base["models"] * 2})
    with pytest.raises(ConfigError, match="min_replicas \\(3\\) is above max_replicas \\(2\\)"):
        parse_app_args({**base, "model_deployment": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}})
    with pytest.raises(ConfigError, match="the ingress runs one replica; set ui: false"):
        parse_app_args({**base, "ingress_deployment": {"num_replicas": 2}})
    assert parse_app_args({**base, "ui": False, "ingress_deployment": {"num_replicas": 2}}).ingress_deployment.num_replicas == 2
    with pytest.raises(ConfigError, match="quantization=4bit computes in half precision"):
        parse_app_args({"models": [{"name": "m", "checkpoint": "x", "quantization": "4bit"}]})
