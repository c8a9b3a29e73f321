"""ViT encoder + text decoder (Flax NNX) and KV-cache generation."""

from r3jax.model.config import VIT_SIZES, ModelConfig
from r3jax.model.decoding import (Generation, generate, generate_recompute,
                                  make_generate_fn, sample_token)
from r3jax.model.model import Model

__all__ = [
    "VIT_SIZES", "Generation", "Model", "ModelConfig", "generate",
    "generate_recompute", "make_generate_fn", "sample_token",
]
