"""The joint image-to-text model: ViT encoder + text decoder.

Dimensions:
  B: batch     H, W: image height, width     P: image tokens
  L: text length     S: tokens per decode step     T: KV-cache length
  D: decoder width   V: vocabulary

Parameters carry logical partitioning metadata, so build the model under a mesh
(`jax.set_mesh` + `nnx.logical_axis_rules`), under `nnx.use_eager_sharding(False)`,
or abstractly with `nnx.eval_shape` inside either. Training and evaluation keep
`graphdef, state = nnx.split(model)` and call, inside jit,
`nnx.merge(graphdef, state).decode(...)` (or `encode`, `__call__`); incremental
decoding goes through r3jax.model.decoding.

`cfg.remat` names the activation-checkpointing policy of every block and
`cfg.scan_layers` stacks each part's blocks along a leading "layers" axis run by
jax.lax.scan (r3jax/model/scan.py, with the converters between the two parameter
layouts); the methods below behave the same in both layouts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from r3jax.model.config import ModelConfig
from r3jax.model.decoder import Cache, CrossKV, Decoder
from r3jax.model.layers import Dense
from r3jax.model.vit import Encoder


class Model(nnx.Module):
  """Every task is text generation conditioned on an image."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder = Encoder(cfg, rngs=rngs)
    # Image tokens are projected once, so cached cross-attention k/v and every
    # decoder layer see decoder width.
    self.img_proj = nnx.data(None)
    if cfg.enc_width != cfg.dec_width:
      # One "embed" name only, so that a rule never maps two dims to one mesh axis.
      self.img_proj = Dense((cfg.enc_width,), (cfg.dec_width,), (None,),
                            ("embed",), rngs=rngs, dtype=cfg.compute_dtype)
    self.decoder = Decoder(cfg, rngs=rngs)

  def encode(self, images_BxHxWx3: jax.Array) -> jax.Array:
    """uint8 [0, 255] or float [-1, 1] images -> img_BxPxD at decoder width."""
    img_BxPxD = self.encoder(images_BxHxWx3)
    if self.img_proj is not None:
      img_BxPxD = self.img_proj(img_BxPxD)
    return img_BxPxD

  def decode(self, img_BxPxD: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    """Causal teacher forcing at positions 0..L-1 -> float32 logits_BxLxV."""
    return self.decoder(img_BxPxD, tokens_BxL)

  def __call__(self, images_IxHxWx3: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    """Teacher-forced logits; with I < B images, text rows i*k .. i*k+k-1
    (k = B / I) read image i, which is encoded once (the pipeline's
    per_image)."""
    img_IxPxD = self.encode(images_IxHxWx3)
    n_img, n_txt = images_IxHxWx3.shape[0], tokens_BxL.shape[0]
    if n_img != n_txt:
      if n_txt % n_img:
        raise ValueError(f"{n_txt} text rows cannot share {n_img} images "
                         "evenly")
      img_IxPxD = jnp.repeat(img_IxPxD, n_txt // n_img, axis=0)
    return self.decode(img_IxPxD, tokens_BxL)

  def cross_kv(self, img_BxPxD: jax.Array,
               prompt_BxL: jax.Array | None = None) -> CrossKV:
    """Per-layer cross-attention (k, v), computed once per image, or with
    early fusion (cfg.fusion_depth) once per prompt: `prompt_BxL` holds it
    (up to its first <sep>; what follows is not read)."""
    return self.decoder.cross_kv(img_BxPxD, prompt_BxL)

  def init_cache(self, batch: int, max_len: int | None = None) -> Cache:
    """Zeroed per-layer self-attention k/v buffers of length max_len (default
    cfg.max_len)."""
    return self.decoder.init_cache(batch, max_len or self.cfg.max_len)

  def decode_step(self, cross_kv: CrossKV, cache: Cache, tokens_BxS: jax.Array,
                  start: int | jax.Array) -> tuple[jax.Array, Cache]:
    """Appends tokens at positions start..start+S-1 (start may be traced) ->
    (float32 logits_BxSxV, updated cache). Functional: the model is not mutated."""
    return self.decoder.step(cross_kv, cache, tokens_BxS, start)
