"""llava_platform: train, batch-run and serve LLaVA models on Ray."""

__version__ = "0.1.0"

from llava_platform.cli import drop_bitsandbytes_kernel_notice as _drop_bitsandbytes_kernel_notice

# before any module of the package imports peft (and so bitsandbytes): in jobs, tests, Ray workers and replicas
_drop_bitsandbytes_kernel_notice()
