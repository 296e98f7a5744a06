"""llava_platform: train, batch-run and serve LLaVA models on Ray."""

__version__ = "0.1.0"
