"""ViT encoder + text decoder (Flax NNX) and KV-cache generation."""

from r3jax.model.config import REMAT_POLICIES, VIT_SIZES, ModelConfig
from r3jax.model.decoding import (Generation, generate, generate_recompute,
                                  make_generate_fn, sample_token)
from r3jax.model.model import Model
from r3jax.model.scan import pyloop_to_scan, scan_to_pyloop

__all__ = [
    "REMAT_POLICIES", "VIT_SIZES", "Generation", "Model", "ModelConfig", "generate",
    "generate_recompute", "make_generate_fn", "pyloop_to_scan", "sample_token",
    "scan_to_pyloop",
]
