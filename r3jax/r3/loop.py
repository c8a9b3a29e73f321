"""The reason -> reflect -> refine loop at inference, and its per-round scores.

  round 0 (reason)    <caption> <sep>          -> the draft caption
  round r = 1..R      <reflect> DRAFT <sep>    -> REFLECTION, then <eos> when it
                      is the stop string (the example leaves the loop), else
                      <sep> REFINED <eos> in the same decode: REFINED is the
                      next round's draft
  (direct=True, the no-reflect ablation: <refine> DRAFT <sep> -> REFINED, for
  all R rounds, stopping when REFINED repeats the draft)

Each image is encoded and its cross-attention k/v computed once; every stage
and round reuses them, and both stages of a round share one KV cache (the
draft is read once); with `lookup` = k > 0 the reflect + refine decode
verifies up to k tokens per call copied from the draft (prompt-lookup
decoding, exactly greedy), since a refined caption mostly repeats its draft.
Each round decodes only the examples still in the loop,
packed into full batches, so finished examples cost nothing; within a round
the reflection is decoded to its <sep> or <eos> and only the examples whose
reflection names an edit decode a refined caption, again packed (`_round`). A reflection
that is not an instruction counts as a stop, as in the reference code.

Scores by round r (the caption every example holds after round r; examples
that stopped keep theirs): r3/round{r}/{v_strict,v_frac,f1}; and for rounds
r >= 1: improved / worse / unchanged fractions (V_frac against round r-1, over
all examples), stop_rate (stops among the examples that entered the round);
over the run: mean_rounds (reflect rounds run per example), stopped_frac,
false_stop (stopped while the draft was not V_strict, per stop), over_edit
(edited a V_strict draft, per such reflection), under_edit (stopped on a
draft that is not V_strict, per such reflection), reflect_right and
refine_right (which stage fails, `Scorer._stage_scores`), tokens_per_example
(generated tokens, all stages), seconds_per_example; and outside the loop,
refine given the verifier's own instruction on each draft
(`R3Loop.refine_given_edit`): the refine stage without reflect's errors.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from r3jax import sharding
from r3jax.data import tasks as tasks_lib
from r3jax.eval import bleu, cider
from r3jax.model import decoding
from r3jax.r3 import real
from r3jax.r3 import rewards as rewards_lib
from r3jax.r3 import variants as variants_lib
from r3jax.world import edit as edit_lib
from r3jax.world.config import WorldConfig
from r3jax.world.scene import scene_from_arrays
from r3jax.world.verify import verify


@dataclasses.dataclass
class Trajectory:
  """One example through the loop: captions[0] is the draft, captions[r] the
  caption after round r; reflections[r - 1] what round r's reflect said."""
  captions: list[str]
  reflections: list[str]
  stopped: bool = False
  tokens: int = 0



class R3Loop:
  """`run(params, records) -> (trajectories, scores)` for world records, or
  with world=None for real caption records (scored against their references
  by BLEU-4 and CIDEr-D; no verifier, so no false-stop / over-edit rates)."""

  def __init__(self, setup, tokenizer, world: WorldConfig, *, rounds: int,
               batch_size: int, caption_len: int, r3_len: int,
               direct: bool = False, temperature: float = 0.0,
               lookup: int = 0, packed: bool | str = True,
               variant: variants_lib.Variant | None = None,
               given_edit: bool = True):
    """`variant` (r3jax.r3.variants) says what a round runs; None: the
    direct ablation with `direct`, else reflect -> refine. `given_edit`:
    `run` also scores refine on the verifier's own instruction
    (`refine_given_edit`) on world records."""
    dp = setup.mesh.shape["data"] * setup.mesh.shape["fsdp"]
    if batch_size % dp:
      raise ValueError(f"R3 batch_size={batch_size} is not divisible by the "
                       f"data-parallel size data*fsdp={dp}")
    if rounds < 1:
      raise ValueError(f"R3 needs rounds >= 1, got {rounds}")
    self._tok, self._world, self._bs = tokenizer, world, batch_size
    if variant is None:
      variant = variants_lib.DIRECT if direct else variants_lib.REFLECT_REFINE
    self._variant = variant
    self._rounds, self._direct = rounds, not variant.reflect
    self.scorer = Scorer(world, rounds, self._direct)
    self._caption_len, self._r3_len = caption_len, r3_len
    self._shard = sharding.batch_sharding(setup.mesh)
    self._temperature = temperature
    self._packed = packed
    self._given_edit = given_edit
    self._lookup = lookup if temperature == 0 else 0
    graphdef = setup.graphdef

    @jax.jit
    def kv_fn(params, images):
      """Cross-attention k/v once per image; with early fusion they depend
      on each stage's prompt, so the image tokens (decoding computes the
      k/v from them and the prompt)."""
      model = nnx.merge(graphdef, params)
      img = model.encode(images)
      return img if model.cfg.fusion_depth else model.cross_kv(img)

    self._kv_fn = kv_fn
    self._gen_fns = {}
    self._graphdef = graphdef
    self._dp = dp

  def _put(self, x: np.ndarray) -> jax.Array:
    return sharding.put(x, self._shard)

  def _gen_fn(self, max_len: int, prefill_len: int, stops: tuple[int, ...]):
    key = (max_len, prefill_len, stops)
    if key not in self._gen_fns:
      graphdef, tok, temp = self._graphdef, self._tok, self._temperature
      lookup = self._lookup if max_len == self._r3_len else 0

      @jax.jit
      def fn(params, kv_all, idx_B, prompt_BxL, len_B, rng):
        model = nnx.merge(graphdef, params)
        kv = jax.tree.map(lambda x: x[idx_B], kv_all)
        kw = dict(max_len=max_len, eos_id=stops, pad_id=tok.pad_id,
                  prefill_len=prefill_len)
        if lookup:  # the refined caption is confirmed from the draft
          return decoding.generate_lookup(model, kv, prompt_BxL, len_B,
                                          k=lookup, **kw)
        return decoding.generate(model, kv, prompt_BxL, len_B,
                                 temperature=temp,
                                 rng=rng if temp > 0 else None, **kw)
      self._gen_fns[key] = fn
    return self._gen_fns[key]

  def _segment_fns(self):
    """(first, rest): the one-pass round's decode to every row's <sep> or
    <eos>, and its continuation on some of its rows (decoding.generate_until),
    jitted; greedy or sampled as the loop is."""
    if "segments" not in self._gen_fns:
      graphdef, tok, temp = self._graphdef, self._tok, self._temperature
      kw = dict(max_len=self._r3_len, eos_id=tok.eos_id, pad_id=tok.pad_id)

      @functools.partial(jax.jit, static_argnames="prefill_len")
      def first(params, kv_all, idx_B, prompt_BxL, len_B, rng, prefill_len):
        model = nnx.merge(graphdef, params)
        kv = jax.tree.map(lambda x: x[idx_B], kv_all)
        return decoding.generate_until(
            model, kv, prompt_BxL, len_B, prefill_len=prefill_len,
            pause_id=tok.sep_id, temperature=temp,
            rng=rng if temp > 0 else None, **kw)

      @jax.jit
      def rest(params, kv_all, idx_M, states, batch_M, row_M, len_M, rng):
        """Rows row_M of batch states batch_M, pooled into one batch, each
        going on from its own batch's position."""
        model = nnx.merge(graphdef, params)
        kv = jax.tree.map(lambda x: x[idx_M], kv_all)
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
        sub = decoding.DecodeState(
            stacked.t[batch_M], *jax.tree.map(lambda x: x[batch_M, row_M],
                                              tuple(stacked)[1:]))
        return decoding.generate_until(
            model, kv, sub.tokens, len_M, prefill_len=1,
            state=sub, temperature=temp,
            rng=rng if temp > 0 else None, **kw)
      self._gen_fns["segments"] = (first, rest)
    return self._gen_fns["segments"]

  def _round_compacted(self, params, kv_all, rows: Sequence[int],
                       prompts: list[list[int]], rng) -> list[list[int]]:
    """The one-pass round decoded in two segments: every batch to each of its
    rows' <sep> or <eos>; then only the rows whose reflection names an edit,
    pooled from all batches into full batches (their cache rows gathered,
    each going on from its own position). A row that stops costs nothing
    more, and no prompt is read twice. Greedy, each row's tokens are the
    one-pass decode's."""
    tok, bs = self._tok, self._bs
    first, rest = self._segment_fns()
    order = sorted(range(len(rows)), key=lambda i: len(prompts[i]))
    states, gens, stops, go = [], [], [], []  # go: (batch, row in batch)
    batches = []
    for b, s in enumerate(range(0, len(rows), bs)):
      sel = order[s:s + bs]
      n = len(sel)
      sel += [sel[-1]] * (bs - n)  # pad the last batch
      lens = np.array([len(prompts[i]) for i in sel], np.int32)
      buf = np.full((bs, int(lens.max())), tok.pad_id, np.int32)
      for j, i in enumerate(sel):
        buf[j, :lens[j]] = prompts[i]
      idx = np.array([rows[i] for i in sel], np.int32)
      state = first(params, kv_all, self._put(idx),
                    self._put(buf), self._put(lens),
                    jax.random.fold_in(rng, s),
                    prefill_len=max(1, int(lens.min()) // 4 * 4))
      tokens, paused, done = (multihost_utils.process_allgather(x, tiled=True)
                              for x in (state.tokens, state.paused, state.done))
      gen = [tokens[j, lens[j]:].tolist() for j in range(n)]
      stop = [bool(paused[j]) and rewards_lib.read_branch(tok.decode(
          gen[j][:gen[j].index(tok.sep_id)]), "")[1] for j in range(n)]
      go += [(b, j) for j in range(n)
             if paused[j] and not done[j] and not stop[j]]
      states.append(state)
      gens.append(gen)
      stops.append(stop)
      batches.append((sel[:n], idx, lens))
    for s in range(0, len(go), bs):
      part = go[s:s + bs]
      m = self._bucket(len(part))
      part += [part[-1]] * (m - len(part))
      b_m = np.array([b for b, _ in part], np.int32)
      j_m = np.array([j for _, j in part], np.int32)
      idx_m = np.array([batches[b][1][j] for b, j in part], np.int32)
      len_m = np.array([batches[b][2][j] for b, j in part], np.int32)
      more = rest(params, kv_all, self._put(idx_m), tuple(states),
                  self._put(b_m), self._put(j_m),
                  self._put(len_m), jax.random.fold_in(rng, 1_000_003 + s))
      more = multihost_utils.process_allgather(more.tokens, tiled=True)
      for k, (b, j) in enumerate(go[s:s + bs]):
        gens[b][j] = more[k, len_m[k]:].tolist()
    out: dict[int, list[int]] = {}
    for (sel, _, _), gen, stop in zip(batches, gens, stops):
      for j, i in enumerate(sel):
        ids = [t for t in gen[j] if t != tok.pad_id]
        if stop[j]:  # a stop at <sep>: what it wrote after waiting is dropped
          ids = ids[:ids.index(tok.sep_id) + 1]
        out[i] = ids[:ids.index(tok.eos_id)] if tok.eos_id in ids else ids
    return [out[i] for i in range(len(rows))]

  def _bucket(self, n: int) -> int:
    """The batch a continuation of n rows runs in: the smallest of bs/8,
    bs/4, bs/2 and bs (each a multiple of the data-parallel size) that
    holds them, so that few shapes compile."""
    for m in (self._bs // 8, self._bs // 4, self._bs // 2, self._bs):
      if m >= n and m % self._dp == 0 and m > 0:
        return m
    return self._bs

  def _encode(self, params, records) -> Any:
    n, bs = len(records), self._bs
    kvs = []
    for s in range(0, n, bs):
      idx = np.arange(s, s + bs) % n
      images = np.stack([records[i]["image"] for i in idx]).astype(np.uint8)
      kvs.append(self._kv_fn(params, self._put(images)))
    return jax.tree.map(lambda *xs: jax.numpy.concatenate(xs)[:n], *kvs)

  def _decode(self, params, kv_all, rows: Sequence[int], prompts: list[list[int]],
              max_len: int, rng, stops: tuple[int, ...] | None = None
              ) -> list[list[int]]:
    """Generated tokens (eos excluded) for each prompt, in batches of
    similar prompt length: one decode_step reads each batch's common prefix,
    and the rest of a prompt is fed a token per step. With `stops`, a row
    ends at the first of those ids, which is kept as its last token."""
    out: dict[int, list[int]] = {}
    bs = self._bs
    ends = stops or (self._tok.eos_id,)
    order = sorted(range(len(rows)), key=lambda i: len(prompts[i]))
    for s in range(0, len(rows), bs):
      sel = order[s:s + bs]
      sel += [sel[-1]] * (bs - len(sel))  # pad the last batch
      lens = np.array([len(prompts[i]) for i in sel], np.int32)
      buf = np.full((bs, int(lens.max())), self._tok.pad_id, np.int32)
      for j, i in enumerate(sel):
        buf[j, :lens[j]] = prompts[i]
      prefill = max(1, int(lens.min()) // 4 * 4)  # few distinct compilations
      fn = self._gen_fn(max_len, prefill, ends)
      idx = np.array([rows[i] for i in sel], np.int32)
      key = jax.random.fold_in(rng, s)
      gen = fn(params, kv_all, self._put(idx), self._put(buf),
               self._put(lens), key)
      tokens = multihost_utils.process_allgather(gen.tokens, tiled=True)
      for j in range(min(bs, len(rows) - s)):
        ids = tokens[j, lens[j]:].tolist()
        cut = next((k for k, t in enumerate(ids) if t in ends), len(ids))
        if stops and cut < len(ids):
          cut += 1  # the stop it ended at
        out[sel[j]] = [t for t in ids[:cut] if t != self._tok.pad_id]
    return [out[i] for i in range(len(rows))]

  def _drafts(self, params, kv_all, n: int, rng) -> list[list[int]]:
    first = tasks_lib.prompt_ids(self._tok, "caption", None)
    return self._decode(params, kv_all, list(range(n)), [first] * n,
                        self._caption_len, rng)

  def captions(self, params, records: Sequence[Mapping[str, Any]],
               seed: int = 0) -> list[str]:
    """Round 0 only: the model's draft caption of every record."""
    ids = self._drafts(params, self._encode(params, records), len(records),
                       jax.random.key(seed))
    return [self._tok.decode(d) for d in ids]

  def reflections(self, params, records: Sequence[Mapping[str, Any]],
                  drafts: Sequence[str], seed: int = 0) -> list[str]:
    """The model's reflection (greedy, up to its <sep> or <eos>) on each
    record's draft."""
    tok = self._tok
    prompts = [[tok.task_id("reflect")] + tok.encode(d) + [tok.sep_id]
               for d in drafts]
    out = self._reflect(params, self._encode(params, records),
                        list(range(len(records))), prompts,
                        jax.random.key(seed))
    return [tok.decode(ids[:-1] if ids and ids[-1] in (
        tok.sep_id, tok.eos_id) else ids) for ids in out]

  def _reflect(self, params, kv_all, rows, prompts, rng) -> list[list[int]]:
    """Reflections decoded to their <sep> or <eos>, which ends each."""
    tok = self._tok
    return self._decode(params, kv_all, rows, prompts, self._r3_len, rng,
                        stops=(tok.sep_id, tok.eos_id))

  def run(self, params, records: Sequence[Mapping[str, Any]], seed: int = 0
          ) -> tuple[list[Trajectory], dict[str, float]]:
    t0 = time.perf_counter()
    tok = self._tok
    rng = jax.random.key(seed)
    kv_all = self._encode(params, records)
    drafts = self._drafts(params, kv_all, len(records), jax.random.fold_in(rng, 0))
    trajs = [Trajectory([tok.decode(d)], [], tokens=len(d) + 1) for d in drafts]
    active = list(range(len(records)))
    lead = tok.task_id("refine" if self._direct else "reflect")
    for r in range(1, self._rounds + 1):
      if not active:
        break
      prompts = [[lead] + tok.encode(trajs[i].captions[-1]) + [tok.sep_id]
                 for i in active]
      outs = self._round(params, kv_all, active, prompts,
                         jax.random.fold_in(rng, r))
      still = []
      for i, ids in zip(active, outs):
        t = trajs[i]
        t.tokens += len(ids) + 1
        if self._direct:
          refined, reflection = tok.decode(ids), ""
          stop = refined == t.captions[-1]
        else:
          reflection, sep, rest = _split_at(ids, tok.sep_id)
          reflection, refined = tok.decode(reflection), tok.decode(rest)
          _, stopped = rewards_lib.read_branch(reflection,
                                               refined if sep else None)
          stop = stopped or not sep
        t.reflections.append(reflection)
        if stop:
          t.stopped = True
        else:
          t.captions.append(refined)
          still.append(i)
      active = still
    for t in trajs:  # an example that stopped keeps its caption
      t.captions += [t.captions[-1]] * (self._rounds + 1 - len(t.captions))
    seconds = time.perf_counter() - t0
    scores = self.scorer.scores(trajs, records, seconds)
    if self._given_edit and self._world is not None and not self._direct and (
        self._variant.refine_reads_reflection):
      scores.update(self.refine_given_edit(
          params, kv_all, [t.captions[0] for t in trajs], records,
          jax.random.fold_in(rng, self._rounds + 1)))
    return trajs, scores

  def refine_given_edit(self, params, kv_all, drafts: Sequence[str],
                        records: Sequence[Mapping[str, Any]], rng
                        ) -> dict[str, float]:
    """The refine stage alone: on every draft the verifier would edit, the
    refined caption decoded after the verifier's own instruction
    (<reflect> DRAFT <sep> INSTRUCTION <sep>), whatever the model's
    reflection said. Not in the loop's scores (it is not a round):
      r3/refine_given_edit        the fraction that writes the verifier's
                                  one-edit caption, word for word
      r3/refine_given_edit_helps  the fraction whose V_frac rises over the
                                  draft's
    Both are 0 when no draft needs an edit (then r3/refine_given_edit_n,
    the number of such drafts, is 0)."""
    tok, cfg = self._tok, self._world
    rows, prompts, wants, befores, scenes = [], [], [], [], []
    for i, (d, rec) in enumerate(zip(drafts, records)):
      scene = scene_from_arrays(rec["scene"], cfg)
      edit = edit_lib.diagnose(d, scene, cfg)
      if edit is None:
        continue
      rows.append(i)
      prompts.append([tok.task_id("reflect")] + tok.encode(d) + [tok.sep_id]
                     + tok.encode(edit.instruction) + [tok.sep_id])
      wants.append(edit_lib.apply(edit, d, scene, cfg).split())
      befores.append(verify(d, scene, cfg).v_frac)
      scenes.append(scene)
    exact = helps = 0
    if rows:
      outs = self._decode(params, kv_all, rows, prompts, self._r3_len, rng)
      for ids, want, before, scene in zip(outs, wants, befores, scenes):
        got = tok.decode(ids)
        exact += got.split() == want
        helps += verify(got, scene, cfg).v_frac > before
    n = max(len(rows), 1)
    return {"r3/refine_given_edit": exact / n,
            "r3/refine_given_edit_helps": helps / n,
            "r3/refine_given_edit_n": float(len(rows))}

  def _round(self, params, kv_all, rows: Sequence[int],
             prompts: list[list[int]], rng) -> list[list[int]]:
    """One round's output per row: REFLECTION [<sep> REFINED] (or REFINED
    without a reflect stage). The reflection is decoded to its <sep> or
    <eos>; only the rows whose reflection names an edit go on, packed into
    full batches, to decode their refined caption: the rows that stopped
    cost nothing more. Greedy, this is token for token the one decode that
    runs through the <sep> (tests/test_decoding.py).

    Without prompt-lookup (lookup = 0) the refine decode goes on from the
    reflect decode's cache (_round_compacted). With lookup, or
    packed="repack", it prefills its prompt again, so packing pays only when enough rows stop: on a
    2-core CPU, with 3-8% stops, that round took 1.6-1.9x the one-pass round
    (benchmarks/r3_latency.py). `packed=False` decodes REFLECTION <sep>
    REFINED in one pass for every row."""
    tok = self._tok
    reads = self._variant.refine_reads_reflection
    if self._direct or (not self._packed and reads):
      return self._decode(params, kv_all, rows, prompts, self._r3_len, rng)
    if not self._lookup and self._packed != "repack" and reads:
      return self._round_compacted(params, kv_all, rows, prompts, rng)
    first = self._reflect(params, kv_all, rows, prompts,
                          jax.random.fold_in(rng, 0))
    outs, edit_at = [], []
    for k, ids in enumerate(first):
      if ids and ids[-1] == tok.eos_id:
        ids = ids[:-1]
      elif ids and ids[-1] == tok.sep_id and not rewards_lib.read_branch(
          tok.decode(ids[:-1]), "")[1]:
        edit_at.append(k)  # an instruction: its refined caption follows
      outs.append(ids)
    if edit_at:
      # After the reflection, or (a variant whose refine does not read it)
      # from the refine prompt <refine> DRAFT <sep>.
      second = [prompts[k] + outs[k] if reads else
                [tok.task_id("refine")] + prompts[k][1:]
                for k in edit_at]
      refined = self._decode(
          params, kv_all, [rows[k] for k in edit_at], second, self._r3_len,
          jax.random.fold_in(rng, 1))
      for k, ids in zip(edit_at, refined):
        outs[k] = outs[k] + ids
    return outs

  def scores(self, trajs: Sequence[Trajectory],
             records: Sequence[Mapping[str, Any]], seconds: float = 0.0
             ) -> dict[str, float]:
    return self.scorer.scores(trajs, records, seconds)

  def examples(self, trajs: Sequence[Trajectory],
               records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return self.scorer.examples(trajs, records)


@dataclasses.dataclass(frozen=True)
class Scorer:
  """The loop's scores from its trajectories (no model needed: saved
  examples can be scored again, `trajectories` below). world=None scores
  real captions against their references."""
  world: WorldConfig | None
  rounds: int
  direct: bool = False

  def _changes(self, out: dict, trajs, per_round) -> None:
    """improved / worse / unchanged (per_round[r][i]: example i's score after
    round r) and the stop rates by round; mean rounds and stops overall."""
    for r in range(1, self.rounds + 1):
      d = np.asarray(per_round[r]) - np.asarray(per_round[r - 1])
      out[f"r3/round{r}/improved"] = np.mean(d > 1e-9)
      out[f"r3/round{r}/worse"] = np.mean(d < -1e-9)
      out[f"r3/round{r}/unchanged"] = np.mean(np.abs(d) <= 1e-9)
      entered = [t for t in trajs if len(t.reflections) >= r]
      stops = [t for t in entered if len(t.reflections) == r and t.stopped]
      out[f"r3/round{r}/stop_rate"] = len(stops) / max(len(entered), 1)
    out["r3/mean_rounds"] = float(np.mean([len(t.reflections) for t in trajs]))
    out["r3/stopped_frac"] = float(np.mean([t.stopped for t in trajs]))

  def _reference_scores(self, trajs, records, seconds: float
                        ) -> dict[str, float]:
    """Real captions (no world): BLEU-4 and CIDEr-D by round against the
    records' references, changes by per-example CIDEr-D."""
    refs = [[real.words(c) for c in r["captions"]] for r in records]
    out, per_round = {}, []
    for r in range(self.rounds + 1):
      hyps = [real.words(t.captions[r]) for t in trajs]
      mean, each = cider.cider_d(hyps, refs)
      out[f"r3/round{r}/cider_d"] = mean
      out[f"r3/round{r}/bleu4"] = bleu.corpus_bleu(hyps, refs)
      per_round.append(each)
    self._changes(out, trajs, per_round)
    out["r3/tokens_per_example"] = float(np.mean([t.tokens for t in trajs]))
    out["r3/seconds_per_example"] = seconds / max(len(trajs), 1)
    return {k: float(val) for k, val in out.items()}

  def scores(self, trajs: Sequence[Trajectory],
             records: Sequence[Mapping[str, Any]], seconds: float = 0.0
             ) -> dict[str, float]:
    if self.world is None:
      return self._reference_scores(trajs, records, seconds)
    cfg = self.world
    scenes = [scene_from_arrays(r["scene"], cfg) for r in records]
    v = [[verify(c, s, cfg) for c in t.captions] for t, s in zip(trajs, scenes)]
    n, out = len(trajs), {}
    for r in range(self.rounds + 1):
      out[f"r3/round{r}/v_strict"] = np.mean([x[r].v_strict for x in v])
      out[f"r3/round{r}/v_frac"] = np.mean([x[r].v_frac for x in v])
      out[f"r3/round{r}/f1"] = np.mean([x[r].f1 for x in v])
    self._changes(out, trajs, [[x[r].v_frac for x in v]
                               for r in range(self.rounds + 1)])
    false_stop = over_edit = stops = correct_drafts = 0
    for t, x in zip(trajs, v):
      for r in range(1, len(t.reflections) + 1):
        was_right = x[r - 1].v_strict
        stopped_here = t.stopped and r == len(t.reflections)
        stops += stopped_here
        false_stop += stopped_here and not was_right
        correct_drafts += was_right
        over_edit += was_right and not stopped_here
    calls = sum(len(t.reflections) for t in trajs)
    out["r3/false_stop"] = false_stop / max(stops, 1)
    out["r3/over_edit"] = over_edit / max(correct_drafts, 1)
    out["r3/under_edit"] = false_stop / max(calls - correct_drafts, 1)
    out.update(self._stage_scores(trajs, scenes))
    out["r3/tokens_per_example"] = float(np.mean([t.tokens for t in trajs]))
    out["r3/seconds_per_example"] = seconds / max(n, 1)
    return {k: float(val) for k, val in out.items()}

  def _stage_scores(self, trajs: Sequence[Trajectory], scenes
                    ) -> dict[str, float]:
    """Which stage fails, against the verifier's own edit of each draft
    (r3jax.world.edit: `instruction` is the reflect target, `apply` of its
    edit the refine target), over every reflect call of every round:
      r3/reflect_right  the reflection's instruction (or stop string) is the
                        verifier's, exactly
      r3/reflect_helpful  the reflection helps: it stops on a V_strict draft,
                        or names an edit that, applied as the verifier's
                        editor would (edit.from_instruction), raises the
                        draft's V_frac (any helpful edit, not only the
                        verifier's first choice)
      r3/refine_right   of the refines whose target is known (the reflection
                        named the verifier's edit; without a reflect stage,
                        the draft needs an edit), the fraction that wrote the
                        verifier's one-edit caption, word for word
    A loop whose reflect is right but whose refine is not fails at
    generation; the other way round, at understanding."""
    cfg = self.world
    right = calls = refine_right = refines = helpful = 0
    for t, scene in zip(trajs, scenes):
      for r in range(1, len(t.reflections) + 1):
        draft = t.captions[r - 1]
        edit = edit_lib.diagnose(draft, scene, cfg)
        target = edit_lib.STOP if edit is None else edit.instruction
        stopped_here = t.stopped and r == len(t.reflections)
        if self.direct:
          known = edit is not None
        else:
          said = " ".join(t.reflections[r - 1].rsplit(" . ", 1)[-1].split())
          calls += 1
          right += said == target
          if said == edit_lib.STOP:
            helpful += edit is None
          elif (named := edit_lib.from_instruction(said, draft, cfg, scene)):
            after = edit_lib.apply(named, draft, scene, cfg)
            helpful += (verify(after, scene, cfg).v_frac >
                        verify(draft, scene, cfg).v_frac)
          known = said == target and edit is not None
        if known:
          refines += 1
          want = edit_lib.apply(edit, draft, scene, cfg)
          refine_right += (not stopped_here and
                           t.captions[r].split() == want.split())
    out = {"r3/refine_right": refine_right / max(refines, 1)}
    if not self.direct:
      out["r3/reflect_right"] = right / max(calls, 1)
      out["r3/reflect_helpful"] = helpful / max(calls, 1)
    return out

  def examples(self, trajs: Sequence[Trajectory],
               records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One JSON-able row per example (records[i] is row i of its split): the
    captions by round, reflections, stopped, and the verifier's scores by
    round (the inputs of `scores`)."""
    rows = []
    if self.world is None:  # real captions: no verifier scores
      return [{"index": i, "captions": t.captions, "reflections": t.reflections,
               "stopped": t.stopped} for i, t in enumerate(trajs)]
    for i, (t, rec) in enumerate(zip(trajs, records)):
      scene = scene_from_arrays(rec["scene"], self.world)
      v = [verify(c, scene, self.world) for c in t.captions]
      rows.append({"index": i, "captions": t.captions,
                   "reflections": t.reflections, "stopped": t.stopped,
                   "v_strict": [bool(x.v_strict) for x in v],
                   "v_frac": [float(x.v_frac) for x in v],
                   "f1": [float(x.f1) for x in v]})
    return rows


def _split_at(ids: list[int], sep: int) -> tuple[list[int], bool, list[int]]:
  if sep in ids:
    k = ids.index(sep)
    return ids[:k], True, ids[k + 1:]
  return ids, False, []


def trajectories(rows: Sequence[Mapping[str, Any]]) -> list[Trajectory]:
  """Trajectories back from `examples` rows (r3_examples.jsonl); their token
  counts are not saved (0)."""
  return [Trajectory(list(r["captions"]), list(r["reflections"]),
                     bool(r["stopped"])) for r in rows]
