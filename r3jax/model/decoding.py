"""Autoregressive generation with a KV cache, entirely inside jit.

Dimensions:
  B: batch     L: prompt buffer length     T: output length (max_len)
  P: image tokens     D: decoder width     V: vocabulary

Prompts are right-padded with pad_id to L; prompt_len_B gives each one's true length.
The image is encoded once and its cross-attention k/v reused at every step. Positions
[0, prefill_len) go through one decode_step; a lax.while_loop then feeds one position
per iteration: the prompt token while t < prompt_len[i], otherwise the token chosen at
the previous step. An example stops at its first generated eos_id (later positions are
pad_id); the loop ends when all examples stopped or T positions are filled.

From evaluation code, with the trainer's `graphdef, state = nnx.split(model)`:

  generate_fn = make_generate_fn(graphdef, max_len=32, eos_id=EOS, pad_id=PAD,
                                 prefill_len=1)
  out = generate_fn(state, images_BxHxWx3, prompt_BxL, prompt_len_B)
  out.tokens  # B x T int32: prompt, generated tokens, then pad_id
  out.gen_len  # B: tokens generated after the prompt, eos included
  out.done  # B: whether eos was generated

For sampling pass temperature > 0 (and optionally top_k) to make_generate_fn and an
`rng` key to generate_fn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from r3jax.model.model import Model


class Generation(NamedTuple):
  tokens: jax.Array  # B x T int32: prompt, generated tokens, pad_id after eos.
  gen_len: jax.Array  # B int32: tokens generated after the prompt, eos included.
  done: jax.Array  # B bool: eos was generated.


def _image_tokens(model: Model, images_or_img: jax.Array) -> jax.Array:
  """Accepts raw B x H x W x 3 images or already encoded img_BxPxD."""
  return model.encode(images_or_img) if images_or_img.ndim == 4 else images_or_img


def _cross_kv(model: Model, images_or_img):
  """Per-layer cross-attention k/v from images, image tokens, or the k/v
  themselves (a list of (k, v) pairs, reused across calls)."""
  if isinstance(images_or_img, (list, tuple)):
    return images_or_img
  return model.cross_kv(_image_tokens(model, images_or_img))


def _check(model: Model, prompt_BxL: jax.Array, max_len: int, prefill_len: int):
  if max_len > model.cfg.max_len:
    raise ValueError(f"max_len={max_len} exceeds the model's max_len="
                     f"{model.cfg.max_len}.")
  if prompt_BxL.shape[1] > max_len:
    raise ValueError(f"Prompt buffer length {prompt_BxL.shape[1]} exceeds "
                     f"max_len={max_len}.")
  if not 1 <= prefill_len <= prompt_BxL.shape[1]:
    raise ValueError(f"prefill_len={prefill_len} must be in [1, prompt buffer "
                     f"length {prompt_BxL.shape[1]}].")


def _buffer(prompt_BxL: jax.Array, max_len: int, pad_id: int) -> jax.Array:
  tokens_BxT = jnp.full((prompt_BxL.shape[0], max_len), pad_id, jnp.int32)
  return tokens_BxT.at[:, :prompt_BxL.shape[1]].set(prompt_BxL.astype(jnp.int32))


def sample_token(logits_BxV: jax.Array, rng: jax.Array | None, *,
                 temperature: float, top_k: int) -> jax.Array:
  """Greedy at temperature 0; otherwise samples from softmax(logits / temperature)
  restricted to the top_k largest logits (all when top_k is 0)."""
  if temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV / temperature
  if top_k:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV >= kth_Bx1, logits_BxV, -jnp.inf)
  return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


def generate(model: Model, images_or_img: jax.Array, prompt_BxL: jax.Array,
             prompt_len_B: jax.Array, *, max_len: int, eos_id: int, pad_id: int,
             prefill_len: int, temperature: float = 0.0, top_k: int = 0,
             rng: jax.Array | None = None) -> Generation:
  """Generates up to position max_len (see the module docstring).
  `images_or_img` may be raw images, image tokens, or `model.cross_kv(...)`.

  Every prompt must be at least prefill_len tokens long (prefill_len >= 1, static).
  Call inside jit (make_generate_fn does); eager calls work but trace each time.
  """
  _check(model, prompt_BxL, max_len, prefill_len)
  if temperature > 0.0 and rng is None:
    raise ValueError("Sampling with temperature > 0 needs an rng key.")
  batch = prompt_BxL.shape[0]
  prompt_len_B = prompt_len_B.astype(jnp.int32)
  cross_kv = _cross_kv(model, images_or_img)
  cache = model.init_cache(batch, max_len)
  tokens_BxT = _buffer(prompt_BxL, max_len, pad_id)
  done_B = jnp.zeros((batch,), bool)
  gen_len_B = jnp.zeros((batch,), jnp.int32)

  def place(t, logits_BxV, tokens_BxT, done_B, gen_len_B):
    """Fills position t from logits_BxV (predicting t), unless t is in the prompt."""
    forced_B = t < prompt_len_B
    step_rng = None if rng is None else jax.random.fold_in(rng, t)
    chosen_B = sample_token(logits_BxV, step_rng, temperature=temperature,
                            top_k=top_k)
    prompt_B = jax.lax.dynamic_index_in_dim(tokens_BxT, t, axis=1, keepdims=False)
    tok_B = jnp.where(forced_B, prompt_B, jnp.where(done_B, pad_id, chosen_B))
    tokens_BxT = jax.lax.dynamic_update_slice(tokens_BxT, tok_B[:, None], (0, t))
    generated_B = ~forced_B & ~done_B
    return (tokens_BxT, done_B | (generated_B & (tok_B == eos_id)),
            gen_len_B + generated_B)

  if prefill_len == max_len:  # The buffer holds only prompt.
    return Generation(tokens_BxT, gen_len_B, done_B)
  logits_BxSxV, cache = model.decode_step(
      cross_kv, cache, tokens_BxT[:, :prefill_len], 0)
  tokens_BxT, done_B, gen_len_B = place(prefill_len, logits_BxSxV[:, -1],
                                        tokens_BxT, done_B, gen_len_B)

  # t: the last filled position, fed to the model to fill t + 1.
  def cond(carry) -> jax.Array:
    t, _, _, done_B, _ = carry
    return (t + 1 < max_len) & ~jnp.all(done_B)

  def body(carry):
    t, cache, tokens_BxT, done_B, gen_len_B = carry
    tok_Bx1 = jax.lax.dynamic_slice_in_dim(tokens_BxT, t, 1, axis=1)
    logits_Bx1xV, cache = model.decode_step(cross_kv, cache, tok_Bx1, t)
    return (t + 1, cache,
            *place(t + 1, logits_Bx1xV[:, 0], tokens_BxT, done_B, gen_len_B))

  carry = (jnp.int32(prefill_len), cache, tokens_BxT, done_B, gen_len_B)
  _, _, tokens_BxT, done_B, gen_len_B = jax.lax.while_loop(cond, body, carry)
  return Generation(tokens_BxT, gen_len_B, done_B)


def make_generate_fn(graphdef: nnx.GraphDef, *, max_len: int, eos_id: int,
                     pad_id: int, prefill_len: int, temperature: float = 0.0,
                     top_k: int = 0) -> Callable[..., Generation]:
  """Jitted `fn(state, images_or_img, prompt_BxL, prompt_len_B, rng=None)` for a
  model kept as `graphdef, state = nnx.split(model)`."""

  @jax.jit
  def generate_fn(state: nnx.State, images_or_img: jax.Array, prompt_BxL: jax.Array,
                  prompt_len_B: jax.Array, rng: jax.Array | None = None
                  ) -> Generation:
    model = nnx.merge(graphdef, state)
    return generate(model, images_or_img, prompt_BxL, prompt_len_B,
                    max_len=max_len, eos_id=eos_id, pad_id=pad_id,
                    prefill_len=prefill_len, temperature=temperature, top_k=top_k,
                    rng=rng)

  return generate_fn


def generate_recompute(model: Model, images_or_img: jax.Array, prompt_BxL: jax.Array,
                       prompt_len_B: jax.Array, *, max_len: int, eos_id: int,
                       pad_id: int) -> Generation:
  """Greedy reference without a cache: every step re-runs the full teacher-forced
  `decode` over the whole buffer (causal, so only the prefix matters) and reads the
  logits at the previous position. Slow by design; for tests and benchmarks."""
  _check(model, prompt_BxL, max_len, prefill_len=1)
  batch = prompt_BxL.shape[0]
  prompt_len_B = prompt_len_B.astype(jnp.int32)
  img_BxPxD = _image_tokens(model, images_or_img)

  def body(t, carry):
    tokens_BxT, done_B, gen_len_B = carry
    logits_BxTxV = model.decode(img_BxPxD, tokens_BxT)
    prev_BxV = jax.lax.dynamic_index_in_dim(logits_BxTxV, t - 1, axis=1,
                                            keepdims=False)
    forced_B = t < prompt_len_B
    prompt_B = jax.lax.dynamic_index_in_dim(tokens_BxT, t, axis=1, keepdims=False)
    greedy_B = jnp.argmax(prev_BxV, axis=-1).astype(jnp.int32)
    tok_B = jnp.where(forced_B, prompt_B, jnp.where(done_B, pad_id, greedy_B))
    tokens_BxT = jax.lax.dynamic_update_slice(tokens_BxT, tok_B[:, None], (0, t))
    generated_B = ~forced_B & ~done_B
    return (tokens_BxT, done_B | (generated_B & (tok_B == eos_id)),
            gen_len_B + generated_B)

  carry = (_buffer(prompt_BxL, max_len, pad_id), jnp.zeros((batch,), bool),
           jnp.zeros((batch,), jnp.int32))
  tokens_BxT, done_B, gen_len_B = jax.lax.fori_loop(1, max_len, body, carry)
  return Generation(tokens_BxT, gen_len_B, done_B)
