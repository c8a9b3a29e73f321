"""KV-cache decoding against teacher forcing, and generation against the
recompute-everything reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r3jax.model import (Model, ModelConfig, generate_recompute, make_generate_fn,
                         sample_token)
from r3jax.model.decoding import generate, generate_lookup

PAD = 0
MAX_LEN = 12
# Right-padded prompts of different lengths.
PROMPTS = jnp.array([[1, 0, 0, 0, 0], [1, 5, 0, 0, 0], [1, 6, 7, 0, 0],
                     [1, 2, 3, 4, 5]], jnp.int32)
PROMPT_LENS = jnp.array([1, 2, 3, 5], jnp.int32)


@functools.cache
def setup(seed: int = 2) -> tuple[Model, jax.Array]:
  cfg = ModelConfig(vocab_size=11, image_size=16, patch_size=8, enc_width=32,
                    enc_depth=2, enc_heads=2, enc_mlp=64, dec_width=16, dec_depth=2,
                    dec_heads=2, dec_mlp=32, max_len=MAX_LEN)
  with nnx.use_eager_sharding(False):
    model = Model(cfg, rngs=nnx.Rngs(seed))
  # A random head makes greedy outputs depend on the input.
  head = model.decoder.head
  head.kernel[...] = jax.random.normal(jax.random.key(seed + 1), head.kernel.shape)
  images = jax.random.randint(jax.random.key(seed), (4, 16, 16, 3), 0, 256)
  return model, images.astype(jnp.uint8)


@functools.cache
def reference(eos_id: int):
  model, images = setup()
  fn = jax.jit(functools.partial(generate_recompute, model, max_len=MAX_LEN,
                                 eos_id=eos_id, pad_id=PAD))
  return jax.device_get(fn(images, PROMPTS, PROMPT_LENS))


def stopping_eos() -> int:
  """A token that greedy decoding emits for some examples but not for all, so that
  with it as eos some examples stop early and some run to the end."""
  tokens = reference(eos_id=-1).tokens
  generated = [set(row[n:].tolist()) for row, n in zip(tokens, PROMPT_LENS)]
  for token in range(11):
    if token != PAD and 0 < sum(token in g for g in generated) < len(generated):
      return token
  raise AssertionError(f"no suitable eos in {tokens}")


def test_decode_step_matches_teacher_forcing():
  model, images = setup()
  tokens = jax.random.randint(jax.random.key(7), (4, 9), 0, 11)
  img = model.encode(images)
  full = model.decode(img, tokens)
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, cross_kv, cache, tokens, start):
    return nnx.merge(graphdef, state).decode_step(cross_kv, cache, tokens, start)

  cross_kv = model.cross_kv(img)
  for chunks in ([1] * 9, [3, 1, 1, 2, 2]):
    cache, start, pieces = model.init_cache(4, MAX_LEN), 0, []
    for size in chunks:
      logits, cache = step(state, cross_kv, cache, tokens[:, start:start + size],
                           jnp.int32(start))
      pieces.append(logits)
      start += size
    np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, atol=1e-5)
    # Nothing written past the end (keys and values B x N x T x K).
    assert bool(jnp.all(cache[0]["k"][:, :, 9:] == 0))
    assert bool(jnp.all(cache[0]["v"][:, :, 9:] == 0))


def test_decode_step_with_a_start_per_row():
  """A B-vector start puts each row at its own positions: the same logits and
  cache as teacher forcing, and positions past the cache are not written."""
  model, images = setup()
  tokens = jax.random.randint(jax.random.key(8), (4, MAX_LEN), 0, 11)
  img = model.encode(images)
  full = model.decode(img, tokens)
  cross_kv = model.cross_kv(img)
  width = 3
  # Row i has its first start_i tokens cached; the call feeds the next 3
  # (row 3's window runs 2 positions past the cache).
  start = jnp.array([0, 2, 5, MAX_LEN - 1], jnp.int32)
  cache = model.init_cache(4, MAX_LEN)
  for t in range(MAX_LEN):
    _, filled = model.decode_step(cross_kv, cache, tokens[:, t:t + 1], t)
    keep = (t < start)[:, None, None, None]
    cache = [{n: jnp.where(keep, filled[i][n], x) for n, x in layer.items()}
             for i, layer in enumerate(cache)]
  feed = jnp.take_along_axis(
      tokens, jnp.clip(start[:, None] + jnp.arange(width), 0, MAX_LEN - 1), 1)
  logits, new = jax.jit(model.decode_step)(cross_kv, cache, feed, start)
  for i, s in enumerate(start.tolist()):
    n = min(width, MAX_LEN - s)
    np.testing.assert_allclose(logits[i, :n], full[i, s:s + n], atol=1e-5)
  want = model.init_cache(4, MAX_LEN)
  for t in range(MAX_LEN):
    want = model.decode_step(cross_kv, want, tokens[:, t:t + 1], t)[1]
  for i, s in enumerate(start.tolist()):
    upto = min(s + width, MAX_LEN)
    for name in ("k", "v"):
      np.testing.assert_allclose(new[1][name][i, :, :upto],
                                 want[1][name][i, :, :upto], atol=1e-5)
      assert bool(jnp.all(new[1][name][i, :, upto:] == 0))


@pytest.mark.parametrize("prefill_len", [1, 2])
def test_generate_matches_recompute(prefill_len):
  model, images = setup()
  eos = stopping_eos()
  prompts, lens = PROMPTS, PROMPT_LENS
  if prefill_len == 2:  # Every prompt must be at least prefill_len long.
    prompts, lens = prompts.at[0, 1].set(9), lens.at[0].set(2)
  expected = reference(eos) if prefill_len == 1 else jax.device_get(
      generate_recompute(model, images, prompts, lens, max_len=MAX_LEN,
                         eos_id=eos, pad_id=PAD))
  graphdef, state = nnx.split(model)
  generate_fn = make_generate_fn(graphdef, max_len=MAX_LEN, eos_id=eos, pad_id=PAD,
                                 prefill_len=prefill_len)
  out = generate_fn(state, images, prompts, lens)
  np.testing.assert_array_equal(out.tokens, expected.tokens)
  np.testing.assert_array_equal(out.gen_len, expected.gen_len)
  np.testing.assert_array_equal(out.done, expected.done)
  assert out.tokens.shape == (4, MAX_LEN)
  assert 0 < int(out.done.sum()) < 4, out  # Some stop early, some run to the end.
  # Already encoded image tokens give the same result.
  np.testing.assert_array_equal(
      generate_fn(state, model.encode(images), prompts, lens).tokens, out.tokens)


def test_generation_layout_prompt_eos_and_padding():
  eos = stopping_eos()
  free = reference(eos_id=-1)  # Never stops.
  out = reference(eos)
  for i, n in enumerate(PROMPT_LENS.tolist()):
    row = out.tokens[i]
    np.testing.assert_array_equal(row[:n], PROMPTS[i, :n])
    end = n + int(out.gen_len[i])
    if out.done[i]:
      assert row[end - 1] == eos and eos not in row[n:end - 1].tolist()
      assert (row[end:] == PAD).all(), row
    else:
      assert end == MAX_LEN and eos not in row[n:].tolist()
    # Up to eos, stopping changes nothing.
    np.testing.assert_array_equal(row[:end], free.tokens[i, :end])
  np.testing.assert_array_equal(free.gen_len, MAX_LEN - PROMPT_LENS)


def test_sampling_top1_is_greedy_and_rng_matters():
  model, images = setup()
  graphdef, state = nnx.split(model)
  kwargs = dict(max_len=MAX_LEN, eos_id=-1, pad_id=PAD, prefill_len=1)
  top1 = make_generate_fn(graphdef, temperature=2.0, top_k=1, **kwargs)
  np.testing.assert_array_equal(
      top1(state, images, PROMPTS, PROMPT_LENS, jax.random.key(0)).tokens,
      reference(eos_id=-1).tokens)
  sample = make_generate_fn(graphdef, temperature=2.0, **kwargs)
  a = sample(state, images, PROMPTS, PROMPT_LENS, jax.random.key(1)).tokens
  b = sample(state, images, PROMPTS, PROMPT_LENS, jax.random.key(1)).tokens
  c = sample(state, images, PROMPTS, PROMPT_LENS, jax.random.key(2)).tokens
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  np.testing.assert_array_equal(c[:, :1], PROMPTS[:, :1])


def test_sampling_without_rng_is_rejected():
  model, images = setup()
  graphdef, state = nnx.split(model)
  fn = make_generate_fn(graphdef, max_len=MAX_LEN, eos_id=-1, pad_id=PAD,
                        prefill_len=1, temperature=1.0)
  with pytest.raises(ValueError, match="needs an rng key"):
    fn(state, images, PROMPTS, PROMPT_LENS)


def test_top_k_samples_stay_in_top_k():
  logits = jax.random.normal(jax.random.key(0), (3, 11))
  keys = jax.random.split(jax.random.key(1), 500)
  samples = jax.vmap(lambda k: sample_token(logits, k, temperature=5.0, top_k=3))(keys)
  top3 = jax.lax.top_k(logits, 3)[1]
  for row in range(3):
    assert set(np.asarray(samples[:, row]).tolist()) == set(top3[row].tolist())


@pytest.mark.parametrize("top_p, nucleus", [(0.8, {0, 1}), (0.81, {0, 1, 2}),
                                             (0.3, {0}), (1.0, {0, 1, 2, 3})])
def test_top_p_samples_the_smallest_set_reaching_p(top_p, nucleus):
  """Probabilities 0.5, 0.3, 0.15, 0.05 (shuffled): the nucleus is the most
  probable tokens whose mass first reaches top_p."""
  order = np.array([2, 0, 3, 1])  # token 2 is the most probable
  probs = np.array([0.5, 0.3, 0.15, 0.05])[np.argsort(order)]
  logits = jnp.log(jnp.asarray(probs, jnp.float32))[None]
  keys = jax.random.split(jax.random.key(0), 2000)
  samples = jax.vmap(lambda k: sample_token(
      logits, k, temperature=1.0, top_k=0, top_p=top_p))(keys)
  got = np.asarray(samples[:, 0])
  assert set(got.tolist()) == {int(order[i]) for i in nucleus}
  # Renormalised within the nucleus.
  mass = sum(np.array([0.5, 0.3, 0.15, 0.05])[i] for i in nucleus)
  assert np.mean(got == order[0]) == pytest.approx(0.5 / mass, abs=0.04)


def test_generated_tokens_are_in_top_k_of_their_step():
  model, images = setup()
  graphdef, state = nnx.split(model)
  fn = make_generate_fn(graphdef, max_len=MAX_LEN, eos_id=-1, pad_id=PAD,
                        prefill_len=1, temperature=10.0, top_k=2)
  tokens = fn(state, images, PROMPTS, PROMPT_LENS, jax.random.key(3)).tokens
  logits = model(images, tokens)
  top2 = np.asarray(jax.lax.top_k(logits, 2)[1])  # B x T x 2
  greedy = top2[..., 0]
  for i, n in enumerate(PROMPT_LENS.tolist()):
    for t in range(n, MAX_LEN):
      assert tokens[i, t] in top2[i, t - 1], (i, t)
  # At this temperature the second choice is taken too, so top_k is what limits it.
  runner_up = [tokens[i, t] != greedy[i, t - 1]
               for i, n in enumerate(PROMPT_LENS.tolist()) for t in range(n, MAX_LEN)]
  assert any(runner_up)


def _lookup_vs_greedy(eos_id, k, seed, prompts, lens, rows=slice(None)):
  model, images = setup(seed)
  images = images[rows]
  kw = dict(max_len=MAX_LEN, eos_id=eos_id, pad_id=PAD, prefill_len=3)
  want = jax.jit(functools.partial(generate, model, **kw))(images, prompts, lens)
  got = jax.jit(functools.partial(generate_lookup, model, k=k, **kw))(
      images, prompts, lens)
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_array_equal(got.gen_len, want.gen_len)
  np.testing.assert_array_equal(got.done, want.done)
  return int(got.calls)


# Prompts with repeats, so that bigram lookups find proposals.
REPEATS = jnp.array([[1, 2, 1, 2, 1], [4, 5, 4, 5, 0], [1, 6, 7, 0, 0],
                     [1, 2, 3, 4, 5]], jnp.int32)
REPEAT_LENS = jnp.array([5, 4, 3, 5], jnp.int32)


@pytest.mark.parametrize("eos_id", [3, 99])
@pytest.mark.parametrize("k", [1, 6])
@pytest.mark.parametrize("seed", [2, 5])
def test_lookup_decoding_equals_greedy(eos_id, k, seed):
  """Prompt-lookup verification changes only the speed: tokens, lengths and
  done flags equal plain greedy decoding (several seeds, proposal widths,
  with and without an eos in reach)."""
  _lookup_vs_greedy(eos_id, k, seed, REPEATS, REPEAT_LENS)


def test_lookup_decoding_saves_model_calls_on_repetitive_output():
  # This random model's greedy output for row 2 is "1 6 7 1 1 1 ...": the
  # copied proposals are confirmed several at a time.
  calls = _lookup_vs_greedy(99, 6, 2, REPEATS[2:3], REPEAT_LENS[2:3], slice(2, 3))
  assert calls <= (MAX_LEN - 3) // 2


def test_stopping_at_a_separator_then_resuming_equals_one_decode():
  """R3's packed round: greedy decoding stopped at a separator S (or eos),
  then resumed from prompt + what it wrote, gives every row the tokens of
  the one-pass decode that runs through S."""
  model, images = setup()
  eos = stopping_eos()
  run = lambda prompts, lens, stops: jax.device_get(jax.jit(  # noqa: E731
      functools.partial(generate, model, max_len=MAX_LEN, eos_id=stops,
                        pad_id=PAD, prefill_len=1))(images, prompts, lens))
  full = run(PROMPTS, PROMPT_LENS, eos)
  gen = [row[n:].tolist() for row, n in zip(full.tokens, PROMPT_LENS)]
  # S: a token some row writes before it stops.
  sep = next(t for t in range(1, 11) if t != eos and any(
      t in g[:g.index(eos) if eos in g else len(g)] for g in gen))
  first = run(PROMPTS, PROMPT_LENS, (sep, eos))
  resumed_rows, lens = [], []
  for row, n in zip(first.tokens, PROMPT_LENS.tolist()):
    out = row[n:].tolist()
    k = next(i for i, t in enumerate(out + [PAD]) if t in (sep, eos, PAD))
    resumed_rows.append(row[:n + k + 1].tolist())
    lens.append(n + k + 1)
  width = max(lens)
  resumed = jnp.asarray([r + [PAD] * (width - len(r)) for r in resumed_rows])
  second = run(resumed, jnp.asarray(lens, jnp.int32), eos)
  at_sep = [r[-1] == sep for r in resumed_rows]
  assert any(at_sep)  # some rows did stop at S
  # Rows that stopped at S resume; the others ended in the first decode.
  both = np.where(np.asarray(at_sep)[:, None], second.tokens, first.tokens)
  np.testing.assert_array_equal(both, full.tokens)


def test_pausing_at_a_separator_and_going_on_with_some_rows_equals_one_decode():
  """R3's compacted round: a decode paused once every row is done or has
  written S, continued on a subset of its rows (their cache rows gathered, in
  another order), writes each of those rows' tokens of the one-pass decode;
  rows done in the first segment already hold theirs."""
  from r3jax.model.decoding import DecodeState, generate_until
  model, images = setup()
  eos = stopping_eos()
  kw = dict(max_len=MAX_LEN, eos_id=eos, pad_id=PAD, prefill_len=1)
  full = jax.device_get(jax.jit(functools.partial(generate, model, **kw))(
      images, PROMPTS, PROMPT_LENS))
  gen = [row[n:].tolist() for row, n in zip(full.tokens, PROMPT_LENS)]
  sep = next(t for t in range(1, 11) if t != eos and sum(
      t in g[:g.index(eos) if eos in g else len(g)] for g in gen) >= 2)
  first = jax.jit(functools.partial(generate_until, model, pause_id=sep, **kw))(
      images, PROMPTS, PROMPT_LENS)
  paused = np.asarray(first.paused) & ~np.asarray(first.done)
  assert paused.sum() >= 2 and int(first.t) < MAX_LEN - 1  # it did pause
  rows = np.flatnonzero(paused)[::-1]  # the subset, reversed

  @jax.jit
  def rest(state, rows):
    sub = DecodeState(state.t, *jax.tree.map(lambda x: x[rows],
                                             tuple(state)[1:]))
    return generate_until(model, images[rows], sub.tokens, PROMPT_LENS[rows],
                          state=sub, **kw)

  more = jax.device_get(rest(first, jnp.asarray(rows)))
  np.testing.assert_array_equal(more.tokens, full.tokens[rows])
  np.testing.assert_array_equal(more.gen_len, full.gen_len[rows])
  done = np.asarray(first.done)
  np.testing.assert_array_equal(np.asarray(first.tokens)[done],
                                full.tokens[done])


def test_rows_of_decodes_paused_at_different_positions_go_on_together():
  """Rows of two decodes paused at different positions, pooled into one
  batch with a vector of positions (each row's own), write the one-pass
  decode's tokens."""
  from r3jax.model.decoding import DecodeState, generate_until
  model, images = setup()
  eos = stopping_eos()
  kw = dict(max_len=MAX_LEN, eos_id=eos, pad_id=PAD, prefill_len=1)
  full = jax.device_get(jax.jit(functools.partial(generate, model, **kw))(
      images, PROMPTS, PROMPT_LENS))
  firsts, found = [], None
  for sep in range(1, 11):
    if sep == eos:
      continue
    firsts = [jax.jit(functools.partial(generate_until, model, pause_id=sep,
                                        **kw))(images[h], PROMPTS[h],
                                               PROMPT_LENS[h])
              for h in (slice(0, 2), slice(2, 4))]
    going = [np.flatnonzero(np.asarray(f.paused) & ~np.asarray(f.done))
             for f in firsts]
    if all(len(g) for g in going) and int(firsts[0].t) != int(firsts[1].t):
      found = sep
      break
  assert found is not None  # some S pauses both halves at different steps
  pick = [(h, j) for h in (0, 1) for j in going[h]]
  b = jnp.asarray([h for h, _ in pick])
  j = jnp.asarray([j for _, j in pick])
  rows = np.array([2 * h + j for h, j in pick])

  @jax.jit
  def rest(states, b, j):
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    sub = DecodeState(stacked.t[b], *jax.tree.map(lambda x: x[b, j],
                                                  tuple(stacked)[1:]))
    return generate_until(model, images[rows], sub.tokens, PROMPT_LENS[rows],
                          state=sub, **kw)

  more = jax.device_get(rest(tuple(firsts), b, j))
  np.testing.assert_array_equal(more.tokens, full.tokens[rows])
  np.testing.assert_array_equal(more.gen_len, full.gen_len[rows])
