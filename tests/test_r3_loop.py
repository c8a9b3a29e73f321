"""The R3 loop: early exit, round accounting, and a real decode."""

import jax
import numpy as np
import pytest

from r3jax.r3 import loop as r3_loop
from r3jax.run import loop as train_loop
from r3jax.world import available_corruptions, corrupt, edit, scene_from_arrays


@pytest.fixture(scope="module")
def built():
  from conftest import tiny_config
  c = tiny_config(("caption", "reflect", "refine"))
  mesh, world, setup, init = train_loop.build(c, jax.devices()[:1])
  return c, world, setup, init


def _oracle(world, records, fail_on=(), copy_on=()):
  """A stand-in for the model: drafts with one corruption, then the
  verifier's own reflection and refinement (optionally a wrong stop, or a
  refine that copies the draft)."""
  tok, cfg = world.tokenizer, world.world
  calls = []

  def decode(params, kv_all, rows, prompts, max_len, rng, stops=None):
    """The loop's calls: drafts; reflections (stops=(sep, eos): the stop
    it ended at is its last token); refined captions after a reflection.
    `calls` records the rows of every call but the refines."""
    out = []
    refine = bool(prompts) and prompts[0].count(tok.sep_id) == 2
    if not refine:
      calls.append(list(rows))
    for row, prompt in zip(rows, prompts):
      scene = scene_from_arrays(records[row]["scene"], cfg)
      if prompt[0] == tok.task_id("caption"):
        kinds = available_corruptions(scene, cfg)
        text = corrupt(scene, np.random.default_rng(row), cfg, kinds[0])
        out.append(tok.encode(text))
        continue
      assert stops == (tok.sep_id, tok.eos_id) or refine
      draft = tok.decode(prompt[1:prompt.index(tok.sep_id)])
      e = edit.diagnose(draft, scene, cfg)
      if refine:  # the loop's refines, and refine on the verifier's edit
        assert e is not None
        fixed = draft if row in copy_on else edit.apply(e, draft, scene, cfg)
        out.append(tok.encode(fixed))
      elif e is None or row in fail_on:
        out.append(tok.encode(edit.STOP) + [tok.eos_id])
      else:
        out.append(tok.encode(e.instruction) + [tok.sep_id])
    if refine:
      refines.append(list(rows))
    return out
  refines = []
  decode.refines = refines
  return decode, calls


def test_oracle_loop_exits_early_and_accounts_rounds(built, monkeypatch):
  c, world, setup, init = built
  records = world.records("validation", 12)
  lp = r3_loop.R3Loop(setup, world.tokenizer, world.world, rounds=3,
                      batch_size=4, caption_len=40, r3_len=144,
                      packed="repack")
  decode, calls = _oracle(world, records, fail_on={0})
  monkeypatch.setattr(lp, "_decode", decode)
  monkeypatch.setattr(lp, "_encode", lambda params, recs: None)
  trajs, s = lp.run(None, records)
  n = len(records)
  assert all(len(t.captions) == 4 for t in trajs)
  # Every example enters round 1; later rounds only hold those still editing.
  assert calls[0] == list(range(n)) and calls[1] == list(range(n))
  needs = [len(edit.correct(t.captions[0], scene_from_arrays(
      r["scene"], world.world), world.world)[1]) for t, r in zip(trajs, records)]
  # An example needing k edits reflects in rounds 1..k+1 (the last says stop).
  entered = {r: [i for i in range(n) if i == 0 and r == 1 or
                 i != 0 and needs[i] >= r - 1] for r in (1, 2, 3)}
  ran = [r for r in (1, 2, 3) if entered[r]]
  assert calls[1:] == [entered[r] for r in ran]
  # Within a round only the rows whose reflection names an edit refine;
  # then refine alone, told the verifier's edit of every draft needing one.
  assert decode.refines[-1] == [i for i in range(n) if needs[i]]
  assert s["r3/refine_given_edit_n"] == sum(map(bool, needs))
  assert s["r3/refine_given_edit"] == s["r3/refine_given_edit_helps"] == 1.0
  assert decode.refines[:-1] == [[i for i in entered[r] if i != 0 and
                             needs[i] >= r] for r in ran if any(
                                 i != 0 and needs[i] >= r for i in entered[r])]
  # Row 0 stops wrongly at once; the others end right unless out of rounds.
  assert trajs[0].stopped and len(trajs[0].reflections) == 1
  for i in range(1, n):
    scene = scene_from_arrays(records[i]["scene"], world.world)
    if needs[i] <= 3:
      assert trajs[i].captions[-1] == edit.correct(
          trajs[i].captions[0], scene, world.world)[0]
      assert trajs[i].stopped == (needs[i] < 3)
  assert s["r3/round0/v_strict"] == 0.0
  assert s["r3/round1/stop_rate"] == pytest.approx(1 / n)
  assert s["r3/false_stop"] == pytest.approx(
      1 / sum(t.stopped for t in trajs))
  assert s["r3/over_edit"] == 0.0
  # Reflections on wrong captions: row 0's one, then min(k, 3) of a row
  # needing k edits (its last, stopping reflection meets a right caption).
  wrong = 1 + sum(min(needs[i], 3) for i in range(1, n))
  assert s["r3/under_edit"] == pytest.approx(1 / wrong)
  assert s["r3/round3/v_strict"] == pytest.approx(
      sum(1 <= needs[i] <= 3 for i in range(1, n)) / n)
  assert s["r3/mean_rounds"] == pytest.approx(
      np.mean([len(t.reflections) for t in trajs]))
  assert s["r3/round1/improved"] == pytest.approx((n - 1) / n)
  assert s["r3/round1/worse"] == 0.0
  calls_n = sum(len(t.reflections) for t in trajs)
  assert s["r3/reflect_right"] == pytest.approx((calls_n - 1) / calls_n)
  assert s["r3/refine_right"] == 1.0


def test_stage_scores_say_which_stage_fails(built, monkeypatch):
  c, world, setup, init = built
  records = world.records("validation", 8)
  lp = r3_loop.R3Loop(setup, world.tokenizer, world.world, rounds=2,
                      batch_size=4, caption_len=40, r3_len=144,
                      packed="repack")
  # Row 0 stops on a wrong draft; rows 1 and 2 are told the right edit but
  # copy the draft, so they are told it again next round.
  decode, _ = _oracle(world, records, fail_on={0}, copy_on={1, 2})
  monkeypatch.setattr(lp, "_decode", decode)
  monkeypatch.setattr(lp, "_encode", lambda params, recs: None)
  trajs, s = lp.run(None, records)
  assert trajs[1].captions == [trajs[1].captions[0]] * 3
  calls_n = sum(len(t.reflections) for t in trajs)
  told = [(i, r) for i, t in enumerate(trajs) if i != 0
          for r in t.reflections if r != edit.STOP]
  assert s["r3/reflect_right"] == pytest.approx((calls_n - 1) / calls_n)
  assert [i for i, _ in told].count(1) == 2  # both rounds
  assert s["r3/refine_right"] == pytest.approx(
      sum(i not in (1, 2) for i, _ in told) / len(told))
  # The same captions, scored without a reflect stage: every draft needing
  # an edit is a known refine (row 0's too), right when its caption is the
  # verifier's.
  direct = r3_loop.Scorer(world.world, 2, direct=True).scores(trajs, records)
  assert direct["r3/refine_right"] == pytest.approx(
      sum(i not in (1, 2) for i, _ in told) / (len(told) + 1))
  assert "r3/reflect_right" not in direct
  # Refine told the verifier's edit of each draft: rows 1 and 2 copy it.
  scenes = [scene_from_arrays(r["scene"], world.world) for r in records]
  edits = [edit.diagnose(t.captions[0], sc, world.world)
           for t, sc in zip(trajs, scenes)]
  told_n = sum(e is not None for e in edits)
  assert {1, 2} <= {i for i, e in enumerate(edits) if e is not None}
  assert s["r3/refine_given_edit"] == pytest.approx((told_n - 2) / told_n)
  from r3jax.world import verify
  helps = sum(
      verify(edit.apply(e, t.captions[0], sc, world.world), sc,
             world.world).v_frac > verify(t.captions[0], sc, world.world).v_frac
      for i, (t, e, sc) in enumerate(zip(trajs, edits, scenes))
      if e is not None and i not in (1, 2))
  assert s["r3/refine_given_edit_helps"] == pytest.approx(helps / told_n)
  # Saved examples score the same again, without a model (but refine on the
  # verifier's edit, which needs it).
  again = r3_loop.Scorer(world.world, 2).scores(
      r3_loop.trajectories(lp.examples(trajs, records)), records)
  assert again == {**{k: v for k, v in s.items() if "given_edit" not in k},
                   "r3/tokens_per_example": 0.0,
                   "r3/seconds_per_example": 0.0}


def test_loop_runs_the_model(built):
  c, world, setup, init = built
  state = init()
  records = world.records("validation", 6)
  lp = r3_loop.R3Loop(setup, world.tokenizer, world.world, rounds=2,
                      batch_size=4, caption_len=c.tasks.caption.max_len,
                      r3_len=c.tasks.refine.max_len)
  trajs, s = lp.run(state["params"], records)
  assert len(trajs) == 6 and all(len(t.captions) == 3 for t in trajs)
  assert all(1 <= len(t.reflections) <= 2 for t in trajs)
  assert 0 <= s["r3/round2/v_frac"] <= 1 and s["r3/tokens_per_example"] > 0


def test_a_reflection_helps_when_its_edit_raises_the_score():
  """reflect_right wants the verifier's first-choice edit; reflect_helpful
  any edit that raises V_frac (or a stop on a right draft)."""
  from r3jax.world import WorldConfig
  from r3jax.world.scene import Object, Scene
  cfg = WorldConfig()
  scene = Scene((Object("circle", "red", "large", 0.2, 0.5),
                 Object("square", "blue", "small", 0.8, 0.5)))
  half = "there is a large red circle and a small blue square"
  right = half + " . the circle is left of the square"
  green = "there is a large red circle and a small green square"
  add = "add the circle is left of the square"
  trajs = [
      # The verifier's edit, then a stop on a right caption.
      r3_loop.Trajectory([half, right], [add, edit.STOP], stopped=True),
      # The verifier would first fix the colour; adding the relation helps
      # too. Then a stop on a wrong caption, and an edit naming nothing.
      r3_loop.Trajectory([green, green + " . the circle is left of the square"],
                         [add], stopped=False),
      r3_loop.Trajectory([green], [edit.STOP], stopped=True),
      r3_loop.Trajectory([green, green], ["remove a purple circle"]),
  ]
  s = r3_loop.Scorer(cfg, 1)._stage_scores(trajs, [scene] * 4)
  assert s["r3/reflect_right"] == pytest.approx(2 / 5)
  assert s["r3/reflect_helpful"] == pytest.approx(3 / 5)


class _Sep:
  """The tokenizer with another token as <sep>: one this untrained model
  writes, so that its rows pause mid-round."""

  def __init__(self, tok, sep_id):
    self._tok, self.sep_id = tok, sep_id

  def __getattr__(self, name):
    return getattr(self._tok, name)


def test_compacted_round_equals_the_one_pass_round(built, monkeypatch):
  """The packed round decoded in two segments (to every row's <sep> or
  <eos>, then only the rows whose reflection names an edit, their cache rows
  gathered into a smaller batch) gives every row the one-pass decode's
  tokens; a stop keeps its reflection and <sep> only."""
  c, world, setup, init = built
  params = init()["params"]
  head = params["decoder"]["head"]["kernel"]  # random outputs, not just eos
  params["decoder"]["head"]["kernel"] = 3 * jax.random.normal(
      jax.random.key(1), head.shape)
  records = world.records("validation", 12)
  tok = world.tokenizer
  kw = dict(rounds=1, batch_size=8, caption_len=c.tasks.caption.max_len,
            r3_len=c.tasks.refine.max_len)
  probe = r3_loop.R3Loop(setup, tok, world.world, packed=False, **kw)
  kv = probe._encode(params, records)
  rows = list(range(len(records)))
  prompts = [[tok.task_id("reflect")] + tok.encode(
      str(r["captions"][0])) + [tok.sep_id] for r in records]
  key = jax.random.key(0)
  one_pass = probe._round(params, kv, rows, prompts, key)
  # A token most rows write, not first: the stand-in <sep>.
  counts = {}
  for ids in one_pass:
    for t in set(ids[1:]) - {tok.eos_id, tok.pad_id}:
      counts[t] = counts.get(t, 0) + 1
  sep = max(counts, key=counts.get)
  fake = _Sep(tok, sep)
  # Reflections of odd length are stops, the others name an edit.
  stop = lambda text: len(text.split()) % 2 == 1  # noqa: E731
  monkeypatch.setattr(r3_loop.rewards_lib, "read_branch",
                      lambda reflection, refined: (True, stop(reflection)))
  lp = r3_loop.R3Loop(setup, fake, world.world, **kw)
  prompts = [p[:-1] + [sep] for p in prompts]
  want = []
  for ids in r3_loop.R3Loop(setup, fake, world.world, packed=False,
                            **kw)._round(params, kv, rows, prompts, key):
    if sep in ids and stop(tok.decode(ids[:ids.index(sep)])):
      ids = ids[:ids.index(sep) + 1]
    want.append(ids)
  got = lp._round(params, kv, rows, prompts, key)
  assert got == want
  kinds = [(sep in w, sep in w and w[-1] == sep) for w in want]
  assert (True, True) in kinds and (True, False) in kinds  # stops and edits
