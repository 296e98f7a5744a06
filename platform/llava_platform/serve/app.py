"""The Serve application builder: a Serve config's `args` -> the ingress bound to the model deployment.

    applications:
      - name: llava
        route_prefix: /
        import_path: llava_platform.serve.app:build_app
        args: {models: [{name: llava-tiny, checkpoint: jobs/assets/tiny-base}]}

The args are validated first (serve/spec.py: a misspelt key stops the deploy with one line naming
it and the closest valid one); replicas, autoscaling and resources go onto the deployments here,
since Serve hands the builder only `args`.
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve
from ray.serve import Application

from llava_platform.serve.ingress import ApiIngress
from llava_platform.serve.replica import LlavaModel
from llava_platform.serve.spec import ServeAppSpec, parse_app_args
from llava_platform.storage import is_uri

__all__ = ["build_app"]


def build_app(args: dict[str, Any] | ServeAppSpec) -> Application:
    spec = _absolute_paths(parse_app_args(args))
    model = serve.deployment(LlavaModel, name="LlavaModel").options(**spec.model_deployment.to_options())
    ingress = serve.deployment(ApiIngress, name="ApiIngress").options(**spec.ingress_deployment.to_options())
    return ingress.bind(spec, model.bind(spec))


def _absolute_paths(spec: ServeAppSpec) -> ServeAppSpec:
    """Local checkpoint and example paths, relative in a config (jobs/assets/tiny-base), are read from where the app
    is built (`serve run`'s directory; the runtime_env working_dir under `serve deploy`), not from each replica's
    own working directory."""
    models = [m.model_copy(update={"checkpoint": _absolute(m.checkpoint)}) for m in spec.models]
    folder = spec.examples_folder and _absolute(spec.examples_folder)
    return spec.model_copy(update={"models": models, "examples_folder": folder})


def _absolute(path: str) -> str:
    """A relative local path made absolute; absolute paths, URIs and hub ids (org/name, no such folder) kept."""
    if is_uri(path) or os.path.isabs(path) or not os.path.exists(path):
        return path
    return os.path.abspath(path)
