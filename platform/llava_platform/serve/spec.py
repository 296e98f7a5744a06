"""The Serve application's `args`: one typed spec, checked before anything deploys.

    applications:
      - name: llava
        import_path: llava_platform.serve.app:build_app
        args:                                   # <- ServeAppSpec
          models: [{name: llava-tiny, checkpoint: jobs/assets/tiny-base}]
          model_deployment: {autoscaling: {min_replicas: 1, max_replicas: 4}}

Unknown keys anywhere (the autoscaling keys included, which Serve itself would ignore) are a
ConfigError naming the dotted key and the closest valid one. The builder applies replicas,
autoscaling and resources to the deployments itself, so a Serve config needs only `args`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from llava_platform.config import SamplingSpec, StorageSpec, StrictModel, validate

__all__ = [
    "ServedModelSpec",
    "SamplingDefaults",
    "LimitsSpec",
    "BatchingSpec",
    "AutoscalingSpec",
    "DeploymentSpec",
    "AuthSpec",
    "ImageFetchSpec",
    "ServeAppSpec",
    "parse_app_args",
]


class ServedModelSpec(StrictModel):
    """One model the app serves, by name (the `model` field of an OpenAI request)."""

    name: str = Field(pattern=r"^[\w.:/-]+$", description="name clients ask for; the first model is the default")
    checkpoint: str = Field(
        description="HF-format LLaVA checkpoint or platform adapter checkpoint: local directory, hub id, or "
        "s3:// / gs:// URI (copied to a local cache on each replica)"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype once loaded")
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "none", description="bitsandbytes quantization of the LLM (GPU only); vision tower and projector stay unquantized"
    )
    template: str | None = Field(None, description="conversation template; default: the checkpoint's own")

    @model_validator(mode="after")
    def _quantized_on_half(self) -> "ServedModelSpec":
        if self.quantization != "none" and self.dtype == "float32":
            raise ValueError(f"quantization={self.quantization} computes in half precision: set dtype: float16 or bfloat16")
        return self


class SamplingDefaults(StrictModel):
    """Decoding used where a request says nothing, and the caps no request may pass."""

    temperature: float = Field(0.0, ge=0.0, le=2.0, description="default temperature (0: greedy)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="default nucleus mass")
    max_tokens: int = Field(256, gt=0, description="default max_tokens of a request that gives none")

    def to_sampling(self, **request: Any) -> SamplingSpec:
        """A request's SamplingSpec: its own values where given, these defaults elsewhere."""
        given = {k: v for k, v in request.items() if v is not None}
        return SamplingSpec(**{"temperature": self.temperature, "top_p": self.top_p,
                               "max_new_tokens": self.max_tokens, **given})  # fmt: skip


class LimitsSpec(StrictModel):
    """What one request may ask for; each breach is a 4xx naming the limit."""

    max_tokens: int = Field(1024, gt=0, description="largest max_tokens / max_completion_tokens a request may ask")
    max_prompt_tokens: int = Field(4096, gt=0, description="prompt tokens after the template and image tokens")
    max_images: int = Field(4, ge=0, description="images in one request")
    max_image_bytes: int = Field(10 * 2**20, gt=0, description="encoded bytes of one image (base64-decoded or downloaded)")
    max_image_pixels: int = Field(40_000_000, gt=0, description="width x height of one image, read from its header")
    max_image_side: int = Field(
        4096, gt=0, description="longer sides are scaled down to this (aspect kept) before the model's processor, "
        "which would otherwise pad a 4x6000 image to a 6000x6000 square"
    )
    max_body_bytes: int = Field(32 * 2**20, gt=0, description="HTTP request body")
    max_stop_strings: int = Field(4, ge=0, description="stop strings in one request")


class BatchingSpec(StrictModel):
    """Dynamic batching on each model replica (inference/batcher.py)."""

    max_batch_size: int = Field(16, gt=0, description="requests decoded together")
    max_wait_ms: float = Field(10.0, ge=0.0, description="how long the first request of a batch waits for others")


class AutoscalingSpec(StrictModel):
    """Serve's autoscaling_config, with every key checked (Serve ignores unknown ones)."""

    min_replicas: int = Field(1, ge=0, description="replicas kept when idle")
    max_replicas: int = Field(1, ge=1, description="replicas at most")
    initial_replicas: int | None = Field(None, ge=0, description="replicas at deploy time (default: min_replicas)")
    target_ongoing_requests: float = Field(
        8.0, gt=0, description="ongoing requests per replica the autoscaler aims at (about the batch size it runs)"
    )
    upscale_delay_s: float = Field(30.0, ge=0, description="load must stay high this long before a replica is added")
    downscale_delay_s: float = Field(600.0, ge=0, description="load must stay low this long before a replica is removed")
    metrics_interval_s: float | None = Field(None, gt=0, description="how often replicas report their load")
    look_back_period_s: float | None = Field(None, gt=0, description="window the load is averaged over")
    upscaling_factor: float | None = Field(None, gt=0, description="multiplier on each upscaling decision")
    downscaling_factor: float | None = Field(None, gt=0, description="multiplier on each downscaling decision")

    @model_validator(mode="after")
    def _ordered(self) -> "AutoscalingSpec":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self

    def to_serve(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class DeploymentSpec(StrictModel):
    """Replicas and resources of one deployment."""

    num_replicas: int | None = Field(None, ge=1, description="a fixed replica count (instead of autoscaling)")
    autoscaling: AutoscalingSpec | None = Field(None, description="autoscale between min_replicas and max_replicas")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per replica (1 for a 7B in bf16)")
    max_ongoing_requests: int = Field(64, gt=0, description="requests one replica holds at once (above the batch size)")
    max_queued_requests: int = Field(
        256, ge=-1, description="requests waiting for a replica before new ones are refused with 503 (-1: no limit)"
    )
    health_check_period_s: float = Field(10.0, gt=0, description="how often Serve asks the replica whether it is healthy")
    health_check_timeout_s: float = Field(30.0, gt=0, description="a health check that takes longer fails")

    @model_validator(mode="after")
    def _one_scaling(self) -> "DeploymentSpec":
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError("give num_replicas or autoscaling, not both")
        return self

    def to_options(self) -> dict[str, Any]:
        """Keyword arguments for Deployment.options()."""
        options: dict[str, Any] = dict(
            ray_actor_options={"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            max_ongoing_requests=self.max_ongoing_requests,
            max_queued_requests=self.max_queued_requests,
            health_check_period_s=self.health_check_period_s,
            health_check_timeout_s=self.health_check_timeout_s,
        )
        if self.autoscaling is not None:
            options["autoscaling_config"] = self.autoscaling.to_serve()
        else:
            options["num_replicas"] = self.num_replicas or 1
        return options


class AuthSpec(StrictModel):
    """API keys: the key itself never sits in a config, only the name of the variable that holds it."""

    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="environment variable holding the API key; when set (and the variable is), every route but "
        "/health needs `Authorization: Bearer <key>`",
    )  # fmt: skip


class ImageFetchSpec(StrictModel):
    """http(s) image URLs: fetched only from public addresses, within a size and a time limit."""

    enabled: bool = Field(True, description="false: only data: URLs and base64 images are accepted")
    timeout_s: float = Field(10.0, gt=0, description="whole download, connect included")
    max_redirects: int = Field(3, ge=0, description="redirects followed, each one checked again")
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="TEST ONLY: hosts exempt from the public-address check (lets tests fetch from 127.0.0.1); "
        "never set in production",
    )


class ServeAppSpec(StrictModel):
    """`args:` of a Serve config whose import_path is llava_platform.serve.app:build_app."""

    models: list[ServedModelSpec] = Field(min_length=1, description="served models; the first is the default")
    sampling: SamplingDefaults = Field(default_factory=SamplingDefaults)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    model_deployment: DeploymentSpec = Field(default_factory=DeploymentSpec, description="the model replicas")
    ingress_deployment: DeploymentSpec = Field(
        default_factory=lambda: DeploymentSpec(num_replicas=1, max_ongoing_requests=1000, max_queued_requests=-1),
        description="the HTTP ingress (CPU); one replica: the gradio dashboard keeps its sessions in the process",
    )
    auth: AuthSpec = Field(default_factory=AuthSpec)
    image_fetch: ImageFetchSpec = Field(default_factory=ImageFetchSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec, description="how s3:// / gs:// checkpoints are reached")
    max_models_per_replica: int | None = Field(
        None, gt=0, description="models one replica keeps loaded (least recently used dropped); default: all of them"
    )
    ui: bool = Field(True, description="mount the gradio dashboard at /ui")
    examples_folder: str | None = Field(
        None, description="images (and their questions, examples.json) offered as examples on the dashboard"
    )

    @model_validator(mode="after")
    def _consistent(self) -> "ServeAppSpec":
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be unique (got {names})")
        if self.sampling.max_tokens > self.limits.max_tokens:
            raise ValueError(f"sampling.max_tokens ({self.sampling.max_tokens}) is above limits.max_tokens "
                             f"({self.limits.max_tokens})")  # fmt: skip
        if self.ui and (self.ingress_deployment.autoscaling is not None or (self.ingress_deployment.num_replicas or 1) > 1):
            raise ValueError("ingress_deployment: the dashboard (ui: true) keeps its sessions in the ingress process, "
                             "so the ingress runs one replica; set ui: false to scale the ingress")  # fmt: skip
        return self

    def model(self, name: str | None) -> ServedModelSpec | None:
        """The model a request names (None: the default); None when no model has that name."""
        if name is None:
            return self.models[0]
        return next((m for m in self.models if m.name == name), None)


def parse_app_args(args: dict[str, Any] | ServeAppSpec) -> ServeAppSpec:
    """Validate a Serve config's `args` (a dict, as Serve passes it) into the spec, or raise ConfigError."""
    if isinstance(args, ServeAppSpec):
        return args
    return validate(args, ServeAppSpec, "serve config args")  # type: ignore[return-value]

