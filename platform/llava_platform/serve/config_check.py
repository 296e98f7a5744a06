"""Check a Serve config before `serve deploy`: Serve's own schema, then every application's args.

    python -m llava_platform.serve.config_check serve_apps/llava-1.5-7b.yaml

Serve's schema accepts unknown keys inside `autoscaling_config` (and ignores them); this check refuses
them there too, wherever they appear (a `deployments:` override included), naming the closest key.
The same args check runs again when the app is built, so `serve run` / `serve deploy` stop on it too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from pydantic import ValidationError
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from llava_platform.cli import user_errors_exit
from llava_platform.config import ConfigError, did_you_mean
from llava_platform.serve.spec import ServeAppSpec, parse_app_args

__all__ = ["check_serve_config"]

BUILDERS = ("llava_platform.serve.app:build_app", "llava_platform.serve.app.build_app")  # Serve takes both forms


def check_serve_config(path: str | Path) -> list[ServeAppSpec]:
    """The args spec of each of the config's applications built by this platform; ConfigError on any problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read it as YAML: {e}") from e
    try:
        schema = ServeDeploySchema.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']} (Serve's config schema)") from e
    specs = []
    for i, app in enumerate(schema.applications):
        for j, deployment in enumerate(app.deployments):
            autoscaling = deployment.autoscaling_config
            if isinstance(autoscaling, dict):
                _check_autoscaling_keys(autoscaling, f"{path}: applications[{i}].deployments[{j}].autoscaling_config")
        if app.import_path in BUILDERS:
            try:
                specs.append(parse_app_args(app.args or {}))
            except ConfigError as e:
                raise ConfigError(str(e).replace("serve config args", f"{path}: applications[{i}].args")) from e
    return specs


def _check_autoscaling_keys(autoscaling: dict, where: str) -> None:
    valid = list(AutoscalingConfig.model_fields)
    for key in autoscaling:
        if key not in valid:
            raise ConfigError(f"{where}.{key}: unknown key (Serve would ignore it); "
                              f"{did_you_mean(key, valid, cutoff=0.5)}valid keys: {', '.join(valid)}")  # fmt: skip


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="Serve config YAML files")
    for config in parser.parse_args().configs:
        specs = check_serve_config(config)
        print(f"{config}: ok ({', '.join(m.name for s in specs for m in s.models)})")


if __name__ == "__main__":
    main()
