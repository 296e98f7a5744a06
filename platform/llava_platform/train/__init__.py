"""Training: FLOP accounting now; the Ray Train worker loop, DeepSpeed configs and checkpointing next."""
