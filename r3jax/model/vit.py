"""ViT image encoder: linear patch embedding, learned positions, pre-LN blocks.

Dimensions:
  B: batch                H, W: image height, width
  P: image tokens (patches)   C: pixels per patch (patch * patch * 3)
  D: encoder width        F: MLP hidden width
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from r3jax.model.config import ModelConfig
from r3jax.model.layers import (ACT_BxLxD, Attention, Dense, LayerNorm, Mlp,
                                maybe_remat, param)
from r3jax.sharding import constrain


class EncoderBlock(nnx.Module):

  def __init__(self, width: int, heads: int, mlp: int, *, rngs: nnx.Rngs,
               dtype: jnp.dtype):
    self.ln_attn = LayerNorm(width, rngs=rngs, dtype=dtype)
    self.attn = Attention(width, heads, rngs=rngs, dtype=dtype)
    self.ln_mlp = LayerNorm(width, rngs=rngs, dtype=dtype)
    self.mlp = Mlp(width, mlp, rngs=rngs, dtype=dtype)

  def __call__(self, x_BxPxD: jax.Array) -> jax.Array:
    x_BxPxD = x_BxPxD + self.attn(self.ln_attn(x_BxPxD))
    x_BxPxD = x_BxPxD + self.mlp(self.ln_mlp(x_BxPxD))
    return constrain(x_BxPxD, ACT_BxLxD)


class Encoder(nnx.Module):
  """Images to image tokens at encoder width (no pooling)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    dtype, width = cfg.compute_dtype, cfg.enc_width
    self.patch_size = cfg.patch_size
    self.image_size = cfg.image_size
    self.dtype = dtype
    self.remat = cfg.remat
    pixels = cfg.patch_size ** 2 * 3
    self.patch_embed = Dense((pixels,), (width,), ("patch",), ("embed",),
                             rngs=rngs, dtype=dtype,
                             kernel_init=nnx.initializers.lecun_normal())
    self.pos_embed = param(rngs, nnx.initializers.normal(width ** -0.5),
                           (cfg.num_patches, width), ("pos", "embed"))
    self.blocks = nnx.List([
        EncoderBlock(width, cfg.enc_heads, cfg.enc_mlp, rngs=rngs, dtype=dtype)
        for _ in range(cfg.enc_depth)])
    self.ln_final = LayerNorm(width, rngs=rngs, dtype=dtype)

  def __call__(self, images_BxHxWx3: jax.Array) -> jax.Array:
    """`images` are uint8 in [0, 255] or floats already in [-1, 1]."""
    if images_BxHxWx3.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(f"Expected B x {self.image_size} x {self.image_size} x 3 "
                       f"images, got shape {images_BxHxWx3.shape}.")
    if images_BxHxWx3.dtype == jnp.uint8:
      x = images_BxHxWx3.astype(jnp.float32) / 127.5 - 1.0
    else:
      x = images_BxHxWx3
    patches_BxPxC = einops.rearrange(
        x.astype(self.dtype), "b (h p) (w q) c -> b (h w) (p q c)",
        p=self.patch_size, q=self.patch_size)
    x_BxPxD = self.patch_embed(patches_BxPxC) + self.pos_embed[...].astype(self.dtype)
    x_BxPxD = constrain(x_BxPxD, ACT_BxLxD)
    apply = maybe_remat(self.remat)
    for block in self.blocks:
      x_BxPxD = apply(block, x_BxPxD)
    return self.ln_final(x_BxPxD)
