"""Text decoder: causal self-attention, cross-attention to image tokens, MLP.

Dimensions:
  B: batch              L: text length (teacher forcing)
  S: tokens appended by one decode step     T: KV-cache length
  P: image tokens       D: decoder width    N: heads    K: head dim
  V: vocabulary

Two paths share the parameters: `__call__` runs teacher forcing over a whole sequence;
`step` appends S tokens to a per-layer KV cache (a plain pytree, so it can be carried
through jax.lax.while_loop) and reuses cross-attention keys/values computed once per
image by `cross_kv`. With scan_layers the blocks' parameters are stacked
(r3jax/model/scan.py): teacher forcing scans over them, and the decode-step paths
slice one layer at a time, so the cache and cross k/v are per-layer lists in both
layouts.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from r3jax.model import scan
from r3jax.model.config import ModelConfig
from r3jax.model.layers import ACT_BxLxD, Attention, Dense, LayerNorm, Mlp, param
from r3jax.sharding import constrain

# One (k_BxNxPxK, v_BxNxPxK) pair per layer: heads before positions, the
# layout Attention.attend_cached reads without transposing.
CrossKV = list[tuple[jax.Array, jax.Array]]
# One {"k": k_BxNxTxK, "v": v_BxNxTxK} dict per layer (likewise).
Cache = list[dict[str, jax.Array]]


def grid_xy(num_tokens: int, cls_token: bool) -> jax.Array:
  """num_tokens x 2 patch-centre coordinates (x, y) in [-1, 1], row-major
  like the patches; a leading [CLS] token's are (0, 0)."""
  side = math.isqrt(num_tokens - cls_token)
  if side * side != num_tokens - cls_token:
    raise ValueError(f"{num_tokens} image tokens{' (with [CLS])' * cls_token}"
                     " are not a square grid of patches")
  centre = (2 * jnp.arange(side, dtype=jnp.float32) + 1) / side - 1
  y_SxS, x_SxS = jnp.meshgrid(centre, centre, indexing="ij")
  xy_PxC = jnp.stack([x_SxS.reshape(-1), y_SxS.reshape(-1)], axis=1)
  if cls_token:
    xy_PxC = jnp.concatenate([jnp.zeros((1, 2), jnp.float32), xy_PxC])
  return xy_PxC


class DecoderBlock(nnx.Module):

  def __init__(self, width: int, heads: int, mlp: int, *, rngs: nnx.Rngs,
               dtype: jnp.dtype, ln_vjp: bool = True, attention: str = "auto",
               cross_pos: str = "none", cls_token: bool = False,
               identity_init: bool = False, alibi: bool = False):
    # identity_init: the three residual branches' output projections start
    # at zero, so the block starts as the identity.
    out_init = nnx.initializers.zeros if identity_init else None
    self.ln_self = LayerNorm(width, rngs=rngs, dtype=dtype, custom_vjp=ln_vjp)
    self.self_attn = Attention(width, heads, rngs=rngs, dtype=dtype,
                               implementation=attention, out_init=out_init)
    self.ln_cross = LayerNorm(width, rngs=rngs, dtype=dtype, custom_vjp=ln_vjp)
    self.cross_attn = Attention(width, heads, rngs=rngs, dtype=dtype,
                                implementation=attention, out_init=out_init)
    self.ln_mlp = LayerNorm(width, rngs=rngs, dtype=dtype, custom_vjp=ln_vjp)
    self.mlp = Mlp(width, mlp, rngs=rngs, dtype=dtype, out_init=out_init)
    self.cls_token = cls_token
    # ModelConfig.dec_alibi: a learned per-head slope m_h, and self-attention
    # scores minus m_h * (query position - key position) (Press et al.,
    # 2022, "Train short, test long"), starting at ALiBi's 2^(-8 h / N).
    self.alibi = nnx.data(None)
    if alibi:
      slopes = 2.0 ** (-8.0 * jnp.arange(1, heads + 1) / heads)
      self.alibi = param(rngs, lambda key, shape, dtype: slopes.astype(dtype),
                         (heads,), ("heads",))
    # ModelConfig.cross_pos="xy": (x, y) -> each head's value offset, zero at
    # first, so a model that gains it computes what it did without it.
    self.xy_value = nnx.data(None)
    if cross_pos == "xy":
      self.xy_value = param(rngs, nnx.initializers.zeros,
                            (2, heads, width // heads), (None, "heads", "kv"))

  def cross_kv(self, img_BxPxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Cross-attention keys and values of the image tokens, B x P x N x K."""
    k_BxPxNxK, v_BxPxNxK = self.cross_attn.kv(img_BxPxD)
    if self.xy_value is not None:
      xy_PxC = grid_xy(img_BxPxD.shape[1], self.cls_token)
      v_BxPxNxK = v_BxPxNxK + jnp.einsum(
          "pc,cnk->pnk", xy_PxC, self.xy_value[...]).astype(v_BxPxNxK.dtype)
    return k_BxPxNxK, v_BxPxNxK

  def _bias(self, q_pos: jax.Array, k_pos: jax.Array) -> jax.Array | None:
    """ALiBi's score bias for queries at q_pos (S, or B x S) and keys at
    k_pos (T): 1 x N x S x T or B x N x S x T, or None without it."""
    if self.alibi is None:
      return None
    dist = (q_pos[..., None] - k_pos).astype(jnp.float32)
    dist_BxSxT = dist.reshape((-1, *dist.shape[-2:]))
    return -self.alibi[...][None, :, None, None] * dist_BxSxT[:, None]

  def self_attend(self, x_BxLxD: jax.Array) -> jax.Array:
    """The causal self-attention branch over positions 0..L-1."""
    pos_L = jnp.arange(x_BxLxD.shape[1])
    return self.self_attn(self.ln_self(x_BxLxD), is_causal=True,
                          bias=self._bias(pos_L, pos_L))

  def __call__(self, x_BxLxD: jax.Array, img_BxPxD: jax.Array) -> jax.Array:
    x_BxLxD = x_BxLxD + self.self_attend(x_BxLxD)
    x_BxLxD = x_BxLxD + self.cross_attn.attend(self.ln_cross(x_BxLxD),
                                               *self.cross_kv(img_BxPxD))
    x_BxLxD = x_BxLxD + self.mlp(self.ln_mlp(x_BxLxD))
    return constrain(x_BxLxD, ACT_BxLxD)

  def step(self, x_BxSxD: jax.Array, cross_kv: tuple[jax.Array, jax.Array],
           cache: dict[str, jax.Array], start: int | jax.Array,
           mask_Bx1xSxT: jax.Array, pos_BxS: jax.Array
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    h_BxSxD = self.ln_self(x_BxSxD)
    k_BxSxNxK, v_BxSxNxK = self.self_attn.kv(h_BxSxD)
    cache = {"k": _write(cache["k"], k_BxSxNxK, start),
             "v": _write(cache["v"], v_BxSxNxK, start)}
    bias = self._bias(pos_BxS, jnp.arange(cache["k"].shape[2]))
    x_BxSxD = x_BxSxD + self.self_attn.attend_cached(
        h_BxSxD, cache["k"], cache["v"], mask=mask_Bx1xSxT, bias=bias)
    x_BxSxD = x_BxSxD + self.cross_attn.attend_cached(self.ln_cross(x_BxSxD),
                                                      *cross_kv)
    x_BxSxD = x_BxSxD + self.mlp(self.ln_mlp(x_BxSxD))
    return constrain(x_BxSxD, ACT_BxLxD), cache


class FusionBlock(nnx.Module):
  """Early fusion (ModelConfig.fusion_depth): image tokens read the prompt.

  The prompt's embeddings first attend to each other (bidirectionally, over
  the prompt only), so that a word carries its phrase; then every image
  token attends to them, then the image tokens attend to each other, then an
  MLP. A token of the object a phrase names can so mark itself, and compare
  itself with the token another phrase names, before the decoder reads the
  image. The three branches that write to the image tokens start at zero:
  the block starts as the identity."""

  def __init__(self, width: int, heads: int, mlp: int, *, rngs: nnx.Rngs,
               dtype: jnp.dtype, ln_vjp: bool = True, attention: str = "auto"):
    def ln():
      return LayerNorm(width, rngs=rngs, dtype=dtype, custom_vjp=ln_vjp)

    def attn(out_init=None):
      return Attention(width, heads, rngs=rngs, dtype=dtype,
                       implementation=attention, out_init=out_init)

    zeros = nnx.initializers.zeros
    self.ln_text, self.text_attn = ln(), attn()
    self.ln_query, self.ln_prompt, self.read = ln(), ln(), attn(zeros)
    self.ln_self, self.self_attn = ln(), attn(zeros)
    self.ln_mlp = ln()
    self.mlp = Mlp(width, mlp, rngs=rngs, dtype=dtype, out_init=zeros)

  def __call__(self, img_BxPxD: jax.Array, text_BxLxD: jax.Array,
               prompt_BxL: jax.Array) -> jax.Array:
    keys = prompt_BxL[:, None, None, :]  # B x 1 x 1 x L: attend to prompt
    text_BxLxD = text_BxLxD + self.text_attn.attend(
        self.ln_text(text_BxLxD), *self.text_attn.kv(self.ln_text(text_BxLxD)),
        mask=keys)
    img_BxPxD = img_BxPxD + self.read.attend(
        self.ln_query(img_BxPxD), *self.read.kv(self.ln_prompt(text_BxLxD)),
        mask=keys)
    img_BxPxD = img_BxPxD + self.self_attn(self.ln_self(img_BxPxD))
    img_BxPxD = img_BxPxD + self.mlp(self.ln_mlp(img_BxPxD))
    return constrain(img_BxPxD, ACT_BxLxD)


def _write(cache_BxNxTxK: jax.Array, new_BxSxNxK: jax.Array,
           start: int | jax.Array) -> jax.Array:
  """The cache with positions start..start+S-1 replaced by the new entries; a
  B-vector `start` places each row at its own positions, and positions past
  the cache's end are dropped."""
  new_BxSxNxK = new_BxSxNxK.astype(cache_BxNxTxK.dtype)
  if jnp.ndim(start) == 0:
    return jax.lax.dynamic_update_slice(
        cache_BxNxTxK, new_BxSxNxK.transpose(0, 2, 1, 3), (0, 0, start, 0))
  batch, num_new = new_BxSxNxK.shape[:2]
  pos_BxS = start[:, None] + jnp.arange(num_new)[None]
  # Index arrays split by a slice: the indexed shape is B x S x N x K.
  return cache_BxNxTxK.at[jnp.arange(batch)[:, None], :, pos_BxS].set(
      new_BxSxNxK, mode="drop", unique_indices=True)


class Decoder(nnx.Module):
  """Tokens (+ image tokens at decoder width) to float32 next-token logits."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    dtype, width = cfg.compute_dtype, cfg.dec_width
    self.dtype = dtype
    self.max_len = cfg.max_len
    self.remat = cfg.remat
    self.scan_layers = cfg.scan_layers
    self.tok_embed = param(rngs, nnx.initializers.normal(width ** -0.5),
                           (cfg.vocab_size, width), ("vocab", "embed"))
    self.pos_embed = param(rngs, nnx.initializers.normal(width ** -0.5),
                           (cfg.max_len, width), ("pos", "embed"))
    blocks = [DecoderBlock(width, cfg.dec_heads, cfg.dec_mlp, rngs=rngs,
                           dtype=dtype, ln_vjp=cfg.ln_custom_vjp,
                           attention=cfg.attention, cross_pos=cfg.cross_pos,
                           cls_token=cfg.cls_token,
                           identity_init=i >= cfg.dec_identity_from,
                           alibi=cfg.dec_alibi)
              for i in range(cfg.dec_depth)]
    self.blocks = scan.stack(blocks) if cfg.scan_layers else nnx.List(blocks)
    self.sep_id = cfg.sep_id
    self.fusion = nnx.data(None)
    if cfg.fusion_depth:
      self.fusion = nnx.List([
          FusionBlock(width, cfg.dec_heads, cfg.dec_mlp, rngs=rngs,
                      dtype=dtype, ln_vjp=cfg.ln_custom_vjp,
                      attention=cfg.attention)
          for _ in range(cfg.fusion_depth)])
    self.ln_final = LayerNorm(width, rngs=rngs, dtype=dtype,
                              custom_vjp=cfg.ln_custom_vjp)
    # Zero-initialised head (as in CapPa): training starts from uniform predictions.
    self.head = Dense((width,), (cfg.vocab_size,), ("embed",), ("vocab",),
                      rngs=rngs, dtype=dtype, kernel_init=nnx.initializers.zeros,
                      out_dtype=jnp.float32)

  def _embed(self, tokens_BxS: jax.Array, start: int | jax.Array) -> jax.Array:
    """Token + position embeddings from position `start` (a scalar, or a
    B-vector with each row's own; positions past the table are clipped)."""
    num_new = tokens_BxS.shape[1]
    if jnp.ndim(start) == 0:
      pos_SxD = jax.lax.dynamic_slice_in_dim(self.pos_embed[...], start, num_new)
    else:
      pos_SxD = jnp.take(self.pos_embed[...],
                         start[:, None] + jnp.arange(num_new)[None], axis=0,
                         mode="clip")
    # Gather from a whole table: a gather from a vocab/embed-sharded table
    # makes the partitioner replicate the batch-sharded result instead.
    table_VxD = constrain(self.tok_embed[...], (None, None))
    x_BxSxD = jnp.take(table_VxD, tokens_BxS, axis=0) + pos_SxD
    return constrain(x_BxSxD.astype(self.dtype), ACT_BxLxD)

  def _check_len(self, length: int, what: str):
    if length > self.max_len:
      raise ValueError(f"{what} {length} exceeds the model's max_len={self.max_len}.")

  def prompt_mask(self, tokens_BxL: jax.Array) -> jax.Array:
    """B x L bool: the positions up to and including each row's first <sep>
    (every position's at or before it; position 0 alone in a row without
    one). Whatever follows, targets or padding, is outside."""
    sep_BxL = tokens_BxL == self.sep_id
    before_BxL = jnp.cumsum(sep_BxL, axis=1) - sep_BxL
    has_B = sep_BxL.any(axis=1, keepdims=True)
    first = jnp.arange(tokens_BxL.shape[1])[None] == 0
    return (before_BxL == 0) & (has_B | first)

  def fuse(self, img_BxPxD: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    """The image tokens after the fusion blocks have read the prompt in
    tokens_BxL (unchanged without fusion blocks)."""
    img_BxPxD = img_BxPxD.astype(self.dtype)
    if self.fusion is None:
      return img_BxPxD
    text_BxLxD = self._embed(tokens_BxL, 0)
    prompt_BxL = self.prompt_mask(tokens_BxL)
    for block in self.fusion:
      img_BxPxD = block(img_BxPxD, text_BxLxD, prompt_BxL)
    return img_BxPxD

  def __call__(self, img_BxPxD: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    """Teacher forcing at positions 0..L-1."""
    self._check_len(tokens_BxL.shape[1], "Sequence length")
    x_BxLxD = self._embed(tokens_BxL, 0)
    img_BxPxD = self.fuse(img_BxPxD, tokens_BxL)
    x_BxLxD = scan.run_blocks(self.blocks, x_BxLxD, img_BxPxD, remat=self.remat,
                              scanned=self.scan_layers)
    return self.head(self.ln_final(x_BxLxD))

  def _layers(self) -> list[DecoderBlock]:
    return scan.layers(self.blocks, self.scan_layers)

  def cross_kv(self, img_BxPxD: jax.Array,
               prompt_BxL: jax.Array | None = None) -> CrossKV:
    """Per-layer cross-attention k/v; with fusion blocks they depend on the
    prompt (tokens up to the first <sep>; later tokens are not read)."""
    if self.fusion is not None and prompt_BxL is None:
      raise ValueError("a decoder with fusion blocks needs the prompt to "
                       "compute its cross-attention keys and values")
    img_BxPxD = (self.fuse(img_BxPxD, prompt_BxL) if prompt_BxL is not None
                 else img_BxPxD.astype(self.dtype))
    out = []
    for block in self._layers():
      k_BxPxNxK, v_BxPxNxK = block.cross_kv(img_BxPxD)
      out.append((k_BxPxNxK.transpose(0, 2, 1, 3),
                  v_BxPxNxK.transpose(0, 2, 1, 3)))
    return out

  def init_cache(self, batch: int, max_len: int) -> Cache:
    self._check_len(max_len, "Cache length")
    cache = []
    for block in self._layers():
      heads, head_dim = block.self_attn.key.kernel.shape[1:]
      zeros = jnp.zeros((batch, heads, max_len, head_dim), self.dtype)
      cache.append({"k": zeros, "v": zeros})
    return cache

  def step(self, cross_kv: CrossKV, cache: Cache, tokens_BxS: jax.Array,
           start: int | jax.Array) -> tuple[jax.Array, Cache]:
    """Appends tokens at positions start..start+S-1; each attends to cache
    positions <= its own. `start` is a scalar (every row; the caller keeps
    start + S <= T) or a B-vector of each row's own start (positions past T
    are computed but not cached; their logits are meaningless)."""
    num_new, cache_len = tokens_BxS.shape[1], cache[0]["k"].shape[2]
    x_BxSxD = self._embed(tokens_BxS, start)
    pos_BxS = jnp.reshape(start, (-1, 1)) + jnp.arange(num_new)[None]
    mask_Bx1xSxT = (jnp.arange(cache_len)[None, None, :] <=
                    pos_BxS[:, :, None])[:, None]
    new_cache = []
    for block, kv, layer_cache in zip(self._layers(), cross_kv, cache):
      x_BxSxD, layer_cache = block.step(x_BxSxD, kv, layer_cache, start,
                                        mask_Bx1xSxT, pos_BxS)
      new_cache.append(layer_cache)
    return self.head(self.ln_final(x_BxSxD)), new_cache
