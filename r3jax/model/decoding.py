"""Autoregressive generation with a KV cache, entirely inside jit.

Dimensions:
  B: batch     L: prompt buffer length     T: output length (max_len)
  P: image tokens     D: decoder width     V: vocabulary

Prompts are right-padded with pad_id to L; prompt_len_B gives each one's true length.
The image is encoded once and its cross-attention k/v reused at every step. Positions
[0, prefill_len) go through one decode_step; a lax.while_loop then feeds one position
per iteration: the prompt token while t < prompt_len[i], otherwise the token chosen at
the previous step. An example stops at its first generated eos_id, or at any of
them when eos_id is a tuple (later positions are pad_id); the loop ends when
all examples stopped or T positions are filled.

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

import functools

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from r3jax.model.model import Model


class Generation(NamedTuple):
  tokens: jax.Array  # B x T int32: prompt, generated tokens, pad_id after eos.
  gen_len: jax.Array  # B int32: tokens generated after the prompt, eos included.
  done: jax.Array  # B bool: eos was generated.
  calls: jax.Array | None = None  # decode_step calls (generate_lookup only).


def _image_tokens(model: Model, images_or_img: jax.Array) -> jax.Array:
  """Accepts raw B x H x W x 3 images or already encoded img_BxPxD."""
  return model.encode(images_or_img) if images_or_img.ndim == 4 else images_or_img


def _cross_kv(model: Model, images_or_img, prompt_BxL: jax.Array):
  """Per-layer cross-attention k/v from images, image tokens, or the k/v
  themselves (a list of (k, v) pairs, reused across calls; with early
  fusion they must be those of the same prompts)."""
  if isinstance(images_or_img, (list, tuple)):
    return images_or_img
  return model.cross_kv(_image_tokens(model, images_or_img),
                        prompt_BxL if model.cfg.fusion_depth else None)


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


Stops = int | tuple[int, ...]  # one stop id or several


def _is_stop(tokens: jax.Array, eos_id: Stops) -> jax.Array:
  """Whether each token ends its row: eos_id is one id or a tuple of them
  (e.g. R3's reflect stage stops at <sep> or <eos>)."""
  ids = eos_id if isinstance(eos_id, tuple) else (eos_id,)
  return functools.reduce(jnp.logical_or, [tokens == i for i in ids])


def _buffer(prompt_BxL: jax.Array, max_len: int, pad_id: int) -> jax.Array:
  tokens_BxT = jnp.full((prompt_BxL.shape[0], max_len), pad_id, jnp.int32)
  return tokens_BxT.at[:, :prompt_BxL.shape[1]].set(prompt_BxL.astype(jnp.int32))


def sample_token(logits_BxV: jax.Array, rng: jax.Array | None, *,
                 temperature: float, top_k: int, top_p: float = 1.0
                 ) -> jax.Array:
  """Greedy at temperature 0; otherwise samples from softmax(logits /
  temperature) restricted to the top_k largest logits (all when top_k is 0),
  then to the nucleus: the most probable tokens whose probabilities, summed
  in decreasing order, first reach top_p (the most probable one always; all
  when top_p is 1). The order is Hugging Face's (temperature, top-k, top-p)."""
  if temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV / temperature
  if top_k:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV >= kth_Bx1, logits_BxV, -jnp.inf)
  if top_p < 1.0:
    sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    keep_BxV = before_BxV < top_p  # the mass before it is short of top_p
    least_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1,
                        keepdims=True)
    logits_BxV = jnp.where(logits_BxV >= least_Bx1, logits_BxV, -jnp.inf)
  return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


class DecodeState(NamedTuple):
  """A decode between segments: `t` the last filled position (a scalar for
  every row, or a B-vector of each row's own), the self-attention cache and
  the outputs so far; `paused` marks rows that generated the pause id
  (generate_until)."""
  t: jax.Array
  cache: Any
  tokens: jax.Array
  done: jax.Array
  gen_len: jax.Array
  paused: jax.Array


def _place_fn(prompt_len_B, eos_id, pad_id, temperature, top_k, top_p, rng,
              pause_id):
  def place(t, logits_BxV, s: DecodeState) -> DecodeState:
    """Fills position t from logits_BxV (predicting t), unless t is in the
    prompt; a B-vector t fills each row's own position (those past the
    buffer are dropped)."""
    forced_B = t < prompt_len_B
    step_rng = None if rng is None else jax.random.fold_in(rng, jnp.max(t))
    chosen_B = sample_token(logits_BxV, step_rng, temperature=temperature,
                            top_k=top_k, top_p=top_p)
    if jnp.ndim(t) == 0:
      prompt_B = jax.lax.dynamic_index_in_dim(s.tokens, t, axis=1,
                                              keepdims=False)
      in_range_B = True
    else:
      rows_B = jnp.arange(s.tokens.shape[0])
      prompt_B = s.tokens.at[rows_B, t].get(mode="clip")
      in_range_B = t < s.tokens.shape[1]
    tok_B = jnp.where(forced_B, prompt_B, jnp.where(s.done, pad_id, chosen_B))
    if jnp.ndim(t) == 0:
      tokens_BxT = jax.lax.dynamic_update_slice(s.tokens, tok_B[:, None],
                                                (0, t))
    else:
      tokens_BxT = s.tokens.at[rows_B, t].set(tok_B, mode="drop")
    generated_B = ~forced_B & ~s.done & in_range_B
    paused_B = s.paused
    if pause_id is not None:
      paused_B = paused_B | (generated_B & (tok_B == pause_id))
    return DecodeState(t, s.cache, tokens_BxT,
                       s.done | (generated_B & _is_stop(tok_B, eos_id)),
                       s.gen_len + generated_B, paused_B)
  return place


def _run(model, cross_kv, state: DecodeState, place, max_len: int,
         pause_id) -> DecodeState:
  """Feeds one position per iteration until every row is done or T positions
  are filled, or, with pause_id, every row is done or paused."""
  def cond(s: DecodeState) -> jax.Array:
    finished_B = s.done | s.paused if pause_id is not None else s.done
    return jnp.any((s.t + 1 < max_len) & ~finished_B)

  def body(s: DecodeState) -> DecodeState:
    if jnp.ndim(s.t) == 0:
      tok_Bx1 = jax.lax.dynamic_slice_in_dim(s.tokens, s.t, 1, axis=1)
    else:  # each row at its own position
      tok_Bx1 = s.tokens.at[jnp.arange(s.tokens.shape[0]), s.t].get(
          mode="clip")[:, None]
    logits_Bx1xV, cache = model.decode_step(cross_kv, s.cache, tok_Bx1, s.t)
    return place(s.t + 1, logits_Bx1xV[:, 0], s._replace(cache=cache))

  return jax.lax.while_loop(cond, body, state)


def generate_until(model: Model, images_or_img, prompt_BxL: jax.Array,
                   prompt_len_B: jax.Array, *, max_len: int, eos_id: Stops,
                   pad_id: int, prefill_len: int, pause_id: int | None = None,
                   state: DecodeState | None = None, temperature: float = 0.0,
                   top_k: int = 0, top_p: float = 1.0,
                   rng: jax.Array | None = None) -> DecodeState:
  """generate, in segments. Without `state` it starts from the prompts; with
  one (from an earlier call, possibly on a subset of its rows:
  `jax.tree.map(lambda x: x[rows], state)` with t kept) it goes on from
  there. With `pause_id` the segment ends as soon as every row is done or has
  generated that id (the paused rows go on when the state is passed back,
  without pause_id: the continuation writes token for token what one
  uninterrupted decode writes)."""
  _check(model, prompt_BxL, max_len, prefill_len)
  if temperature > 0.0 and rng is None:
    raise ValueError("Sampling with temperature > 0 needs an rng key.")
  prompt_len_B = prompt_len_B.astype(jnp.int32)
  cross_kv = _cross_kv(model, images_or_img, prompt_BxL)
  place = _place_fn(prompt_len_B, eos_id, pad_id, temperature, top_k, top_p,
                    rng, pause_id)
  if state is None:
    batch = prompt_BxL.shape[0]
    state = DecodeState(jnp.int32(0), model.init_cache(batch, max_len),
                        _buffer(prompt_BxL, max_len, pad_id),
                        jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.int32),
                        jnp.zeros((batch,), bool))
    if prefill_len == max_len:  # The buffer holds only prompt.
      return state._replace(t=jnp.int32(max_len - 1))
    logits_BxSxV, cache = model.decode_step(
        cross_kv, state.cache, state.tokens[:, :prefill_len], 0)
    state = place(jnp.int32(prefill_len), logits_BxSxV[:, -1],
                  state._replace(cache=cache))
  else:
    state = state._replace(paused=jnp.zeros_like(state.paused))
  return _run(model, cross_kv, state, place, max_len, pause_id)


def generate(model: Model, images_or_img: jax.Array, prompt_BxL: jax.Array,
             prompt_len_B: jax.Array, *, max_len: int, eos_id: Stops, pad_id: int,
             prefill_len: int, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, rng: jax.Array | None = None) -> Generation:
  """Generates up to position max_len (see the module docstring).
  `images_or_img` may be raw images, image tokens, or `model.cross_kv(...)`.

  Every prompt must be at least prefill_len tokens long (prefill_len >= 1, static).
  Call inside jit (make_generate_fn does); eager calls work but trace each time.
  """
  s = generate_until(model, images_or_img, prompt_BxL, prompt_len_B,
                     max_len=max_len, eos_id=eos_id, pad_id=pad_id,
                     prefill_len=prefill_len, temperature=temperature,
                     top_k=top_k, top_p=top_p, rng=rng)
  return Generation(s.tokens, s.gen_len, s.done)


def make_generate_fn(graphdef: nnx.GraphDef, *, max_len: int, eos_id: Stops,
                     pad_id: int, prefill_len: int, temperature: float = 0.0,
                     top_k: int = 0, top_p: float = 1.0
                     ) -> Callable[..., Generation]:
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
                    top_p=top_p, rng=rng)

  return generate_fn


def generate_recompute(model: Model, images_or_img: jax.Array, prompt_BxL: jax.Array,
                       prompt_len_B: jax.Array, *, max_len: int, eos_id: Stops,
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
    return (tokens_BxT, done_B | (generated_B & _is_stop(tok_B, eos_id)),
            gen_len_B + generated_B)

  carry = (_buffer(prompt_BxL, max_len, pad_id), jnp.zeros((batch,), bool),
           jnp.zeros((batch,), jnp.int32))
  tokens_BxT, done_B, gen_len_B = jax.lax.fori_loop(1, max_len, body, carry)
  return Generation(tokens_BxT, gen_len_B, done_B)


def generate_lookup(model: Model, images_or_img, prompt_BxL: jax.Array,
                    prompt_len_B: jax.Array, *, max_len: int, eos_id: Stops,
                    pad_id: int, prefill_len: int, k: int = 8) -> Generation:
  """Greedy generation equal to `generate(..., temperature=0)` that verifies
  up to k proposed tokens per model call (prompt-lookup decoding).

  Each row proposes, for the positions after its last filled position t, what
  followed the most recent earlier occurrence of its last two tokens (prompt
  and output so far): a refined caption that mostly repeats the draft in its
  prompt is confirmed several tokens per call. Prompt positions propose their
  own token. One call feeds every row's token at t and its k proposals at its
  own positions (decode_step with a per-row start); a row keeps the
  proposals its greedy choices confirm plus the token chosen after them, so
  the output is exactly the greedy one. K/V written for rejected proposals lie
  beyond the row's accepted position and are overwritten by its next call
  before any query can attend to them; near the end of the buffer the
  positions past it are computed but not cached. `calls` counts decode_step
  calls.

  Whether it pays depends on the hardware: a call costs about one step where
  decoding is latency-bound (accelerators), but on a CPU the k extra positions
  cost compute (benchmarks/r3_latency.py measures both).
  """
  _check(model, prompt_BxL, max_len, prefill_len)
  batch = prompt_BxL.shape[0]
  prompt_len_B = prompt_len_B.astype(jnp.int32)
  cross_kv = _cross_kv(model, images_or_img, prompt_BxL)
  cache = model.init_cache(batch, max_len)
  tokens_BxT = _buffer(prompt_BxL, max_len, pad_id)
  positions_T = jnp.arange(max_len)

  def gather(x_BxT, idx_BxS):
    return jnp.take_along_axis(x_BxT, jnp.clip(idx_BxS, 0, max_len - 1), axis=1)

  def propose(tokens_BxT, t_B, m_B):
    """k proposals for positions t+1..t+k of every row, and where they were
    copied from. The copy source is the first occurrence of the bigram after
    m (the source position the row last copied), else its first occurrence,
    so that a row copying a draft walks through it in order."""
    last_B = gather(tokens_BxT, t_B[:, None])[:, 0]
    prev_B = gather(tokens_BxT, jnp.maximum(t_B - 1, 0)[:, None])[:, 0]
    nxt_BxT = jnp.roll(tokens_BxT, -1, axis=1)
    hit_BxT = ((tokens_BxT == prev_B[:, None]) & (nxt_BxT == last_B[:, None]) &
               (positions_T[None] < t_B[:, None] - 1))
    j_BxT = positions_T[None] + 1
    rank_BxT = jnp.where(j_BxT > m_B[:, None], j_BxT, j_BxT + max_len)
    pick_B = jnp.argmin(jnp.where(hit_BxT, rank_BxT, 3 * max_len), axis=1)
    j_B = jnp.where(jnp.any(hit_BxT, axis=1), pick_B + 1, -1)
    # Copy what followed; a copy that reaches the present repeats itself
    # (period t - j), which also continues repeated patterns.
    period_B = jnp.maximum(t_B - j_B, 1)
    src_BxK = j_B[:, None] + 1 + jnp.arange(k)[None] % period_B[:, None]
    copied_BxK = jnp.where(j_B[:, None] >= 0, gather(tokens_BxT, src_BxK),
                           pad_id)
    ahead_BxK = t_B[:, None] + 1 + jnp.arange(k)[None]
    forced_BxK = ahead_BxK < prompt_len_B[:, None]
    return (jnp.where(forced_BxK, gather(tokens_BxT, ahead_BxK), copied_BxK),
            forced_BxK, j_B)

  def advance(t_B, logits_BxSxV, proposal_BxK, forced_BxK, tokens_BxT, done_B,
              gen_len_B):
    """Commits positions t+1..t+a+1 of every row (a: its accepted proposals)."""
    width = logits_BxSxV.shape[1]
    greedy_BxS = jnp.argmax(logits_BxSxV, axis=-1).astype(jnp.int32)
    ahead_BxS = t_B[:, None] + 1 + jnp.arange(width)[None]
    forced_BxS = ahead_BxS < prompt_len_B[:, None]
    chosen_BxS = jnp.where(forced_BxS, gather(tokens_BxT, ahead_BxS), greedy_BxS)
    if proposal_BxK is None:
      a_B = jnp.zeros((batch,), jnp.int32)
    else:
      ok_BxK = forced_BxK | (greedy_BxS[:, :k] == proposal_BxK)
      a_B = jnp.sum(jnp.cumprod(ok_BxK.astype(jnp.int32), axis=1), axis=1)
    n_B = jnp.where(done_B, 0, jnp.minimum(a_B + 1, max_len - 1 - t_B))
    take_BxS = jnp.arange(width)[None] < n_B[:, None]
    gen_BxS = ~forced_BxS & take_BxS
    eos_BxS = gen_BxS & _is_stop(chosen_BxS, eos_id)
    after_eos_BxS = (jnp.cumsum(eos_BxS, axis=1) - eos_BxS) > 0
    new_BxS = jnp.where(after_eos_BxS, pad_id, chosen_BxS)
    live_BxS = gen_BxS & ~after_eos_BxS
    rel_BxT = positions_T[None] - t_B[:, None] - 1
    window_BxT = (rel_BxT >= 0) & (rel_BxT < n_B[:, None])
    tokens_BxT = jnp.where(window_BxT, gather(new_BxS, rel_BxT), tokens_BxT)
    done_B = done_B | jnp.any(live_BxS & _is_stop(chosen_BxS, eos_id), axis=1)
    return t_B + n_B, tokens_BxT, done_B, gen_len_B + live_BxS.sum(1), a_B

  done_B = jnp.zeros((batch,), bool)
  gen_len_B = jnp.zeros((batch,), jnp.int32)
  if prefill_len == max_len:
    return Generation(tokens_BxT, gen_len_B, done_B, jnp.int32(0))
  logits_BxSxV, cache = model.decode_step(
      cross_kv, cache, tokens_BxT[:, :prefill_len], 0)
  t_B = jnp.full((batch,), prefill_len - 1, jnp.int32)
  t_B, tokens_BxT, done_B, gen_len_B, _ = advance(
      t_B, logits_BxSxV[:, -1:], None, None, tokens_BxT, done_B, gen_len_B)
  m_B = jnp.full((batch,), -1, jnp.int32)

  def cond(carry):
    t_B, _, _, done_B, _, _, _ = carry
    return jnp.any(~done_B & (t_B + 1 < max_len))

  def body(carry):
    t_B, cache, tokens_BxT, done_B, gen_len_B, m_B, calls = carry
    proposal_BxK, forced_BxK, j_B = propose(tokens_BxT, t_B, m_B)
    feed_BxS = jnp.concatenate([gather(tokens_BxT, t_B[:, None]), proposal_BxK],
                               axis=1)
    # Every row at its own position; finished rows compute junk that is never
    # read, and positions past the buffer are not cached.
    logits_BxSxV, cache = model.decode_step(cross_kv, cache, feed_BxS, t_B)
    t_B, tokens_BxT, done_B, gen_len_B, a_B = advance(
        t_B, logits_BxSxV, proposal_BxK, forced_BxK, tokens_BxT, done_B,
        gen_len_B)
    return (t_B, cache, tokens_BxT, done_B, gen_len_B,
            jnp.where(j_B >= 0, j_B + a_B, m_B), calls + 1)

  carry = (t_B, cache, tokens_BxT, done_B, gen_len_B, m_B, jnp.int32(1))
  _, _, tokens_BxT, done_B, gen_len_B, _, calls = jax.lax.while_loop(
      cond, body, carry)
  return Generation(tokens_BxT, gen_len_B, done_B, calls)
