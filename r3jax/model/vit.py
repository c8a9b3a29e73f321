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
import numpy as np
from flax import nnx

from r3jax.model import scan
from r3jax.model.config import ModelConfig
from r3jax.model.layers import ACT_BxLxD, Attention, Dense, LayerNorm, Mlp, param
from r3jax.sharding import constrain


class EncoderBlock(nnx.Module):

  def __init__(self, width: int, heads: int, mlp: int, *, rngs: nnx.Rngs,
               dtype: jnp.dtype, approximate_gelu: bool = True,
               ln_vjp: bool = True, attention: str = "auto"):
    self.ln_attn = LayerNorm(width, rngs=rngs, dtype=dtype, custom_vjp=ln_vjp)
    self.attn = Attention(width, heads, rngs=rngs, dtype=dtype,
                          implementation=attention)
    self.ln_mlp = LayerNorm(width, rngs=rngs, dtype=dtype, custom_vjp=ln_vjp)
    self.mlp = Mlp(width, mlp, rngs=rngs, dtype=dtype,
                   approximate=approximate_gelu)

  def __call__(self, x_BxPxD: jax.Array) -> jax.Array:
    x_BxPxD = x_BxPxD + self.attn(self.ln_attn(x_BxPxD))
    x_BxPxD = x_BxPxD + self.mlp(self.ln_mlp(x_BxPxD))
    return constrain(x_BxPxD, ACT_BxLxD)


class ConvStem(nnx.Module):
  """Images to B x P x D tokens: log2(patch) - 1 stride-2 3x3 convolutions with
  GELU (channels 32, 64, ...), then `extra` residual stride-1 3x3
  convolutions at that resolution, then a linear embedding of 2 x 2 patches.

  A token of patch 8 sees 11 x 11 pixels (its own 8 x 8 and a few beyond);
  each extra convolution widens that by patch / 2 pixels on every side, so
  that an object straddling patches (most do at 64 px) is seen whole by the
  tokens it covers."""

  def __init__(self, patch_size: int, width: int, *, rngs: nnx.Rngs,
               dtype: jnp.dtype, extra: int = 0):
    self.dtype = dtype
    chans = [3] + [32 * 2 ** i for i in range(patch_size.bit_length() - 2)]
    self.convs = nnx.List([
        param(rngs, nnx.initializers.he_normal(), (3, 3, cin, cout),
              (None, None, None, None))
        for cin, cout in zip(chans[:-1], chans[1:])])
    self.biases = nnx.List([
        param(rngs, nnx.initializers.zeros, (c,), (None,)) for c in chans[1:]])
    c = chans[-1]
    # Residual branches start small, so that the stem starts close to the
    # plain one.
    self.extra_convs = nnx.List([
        param(rngs, nnx.initializers.variance_scaling(0.1, "fan_in", "normal"),
              (3, 3, c, c), (None, None, None, None)) for _ in range(extra)])
    self.extra_biases = nnx.List([
        param(rngs, nnx.initializers.zeros, (c,), (None,))
        for _ in range(extra)])
    self.embed = Dense((4 * c,), (width,), ("patch",), ("embed",),
                       rngs=rngs, dtype=dtype,
                       kernel_init=nnx.initializers.lecun_normal())

  def _conv(self, x, kernel, bias, stride: int):
    x = jax.lax.conv_general_dilated(
        x, kernel[...].astype(self.dtype), window_strides=(stride, stride),
        padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.gelu(x + bias[...].astype(self.dtype))

  def __call__(self, x_BxHxWx3: jax.Array) -> jax.Array:
    x = x_BxHxWx3.astype(self.dtype)
    for kernel, bias in zip(self.convs, self.biases):
      x = self._conv(x, kernel, bias, 2)
    for kernel, bias in zip(self.extra_convs, self.extra_biases):
      x = x + self._conv(x, kernel, bias, 1)
    patches_BxPxC = einops.rearrange(x, "b (h p) (w q) c -> b (h w) (p q c)",
                                     p=2, q=2)
    return self.embed(patches_BxPxC)


def sincos2d(side: int, width: int) -> np.ndarray:
  """side*side x width positions, row-major like the patches: the first half
  of the channels codes the column (x), the second the row (y), each as
  sin / cos at width/4 frequencies from 1 to 1/10000 (MAE; big_vision's
  posemb_sincos_2d with temperature 10000)."""
  omega = 1.0 / 10000 ** (np.arange(width // 4) / (width // 4))
  y, x = np.mgrid[:side, :side]
  parts = [f(c.reshape(-1, 1) * omega) for c in (x, y) for f in (np.sin, np.cos)]
  return np.concatenate(parts, axis=1).astype(np.float32)


def _sincos2d_init(side: int, cls_token: bool):
  def init(key, shape, dtype=jnp.float32):
    del key
    pos = sincos2d(side, shape[1])
    if cls_token:  # the [CLS] token's position starts at zero
      pos = np.concatenate([np.zeros((1, shape[1]), np.float32), pos])
    return jnp.asarray(pos, dtype)
  return init


class Encoder(nnx.Module):
  """Images to image tokens at encoder width (no pooling): the patches, after
  the [CLS] token when ModelConfig.cls_token."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    dtype, width = cfg.compute_dtype, cfg.enc_width
    self.patch_size = cfg.patch_size
    self.image_size = cfg.image_size
    self.dtype = dtype
    self.remat = cfg.remat
    self.scan_layers = cfg.scan_layers
    self.stem = cfg.stem
    self.cls_token = cfg.cls_token
    if cfg.stem == "conv":
      self.conv_stem = ConvStem(cfg.patch_size, width, rngs=rngs, dtype=dtype,
                                extra=cfg.stem_convs)
    else:
      pixels = cfg.patch_size ** 2 * 3
      self.patch_embed = Dense((pixels,), (width,), ("patch",), ("embed",),
                               rngs=rngs, dtype=dtype,
                               kernel_init=nnx.initializers.lecun_normal())
    if cfg.cls_token:  # position 0 of pos_embed is the token's
      self.cls = param(rngs, nnx.initializers.zeros, (width,), ("embed",))
    pos_init = (nnx.initializers.normal(width ** -0.5)
                if cfg.pos_init == "normal" else
                _sincos2d_init(cfg.image_size // cfg.patch_size, cfg.cls_token))
    self.pos_embed = param(rngs, pos_init, (cfg.num_image_tokens, width),
                           ("pos", "embed"))
    blocks = [EncoderBlock(width, cfg.enc_heads, cfg.enc_mlp, rngs=rngs,
                           dtype=dtype, approximate_gelu=cfg.enc_gelu == "tanh",
                           ln_vjp=cfg.ln_custom_vjp, attention=cfg.attention)
              for _ in range(cfg.enc_depth)]
    self.blocks = scan.stack(blocks) if cfg.scan_layers else nnx.List(blocks)
    self.ln_final = LayerNorm(width, rngs=rngs, dtype=dtype,
                              custom_vjp=cfg.ln_custom_vjp)

  def __call__(self, images_BxHxWx3: jax.Array) -> jax.Array:
    """`images` are uint8 in [0, 255] or floats already in [-1, 1]."""
    if images_BxHxWx3.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(f"Expected B x {self.image_size} x {self.image_size} x 3 "
                       f"images, got shape {images_BxHxWx3.shape}.")
    if images_BxHxWx3.dtype == jnp.uint8:
      x = images_BxHxWx3.astype(jnp.float32) / 127.5 - 1.0
    else:
      x = images_BxHxWx3
    if self.stem == "conv":
      x_BxPxD = self.conv_stem(x)
    else:
      patches_BxPxC = einops.rearrange(
          x.astype(self.dtype), "b (h p) (w q) c -> b (h w) (p q c)",
          p=self.patch_size, q=self.patch_size)
      x_BxPxD = self.patch_embed(patches_BxPxC)
    if self.cls_token:
      cls_Bx1xD = jnp.broadcast_to(self.cls[...].astype(self.dtype),
                                   (x_BxPxD.shape[0], 1, x_BxPxD.shape[-1]))
      x_BxPxD = jnp.concatenate([cls_Bx1xD, x_BxPxD], axis=1)
    x_BxPxD = x_BxPxD + self.pos_embed[...].astype(self.dtype)
    x_BxPxD = constrain(x_BxPxD, ACT_BxLxD)
    x_BxPxD = scan.run_blocks(self.blocks, x_BxPxD, remat=self.remat,
                              scanned=self.scan_layers)
    return self.ln_final(x_BxPxD)
