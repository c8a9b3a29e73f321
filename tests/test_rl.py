"""R3-RL: rewards, advantages, the GRPO objective, the Tree-RL step and its
run."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r3jax.r3 import grounded, grpo
from r3jax.r3 import rewards as rw
from r3jax.r3 import tree_rl
from r3jax.run import loop as train_loop
from r3jax.train import metrics as metrics_lib
from r3jax.train import optim
from r3jax.train import preemption
from r3jax.train.checkpoint import Checkpointer
from r3jax.world import edit
from r3jax.world.scene import Object, Scene
from r3jax.world import WorldConfig

CFG = WorldConfig()
SCENE = Scene((Object("circle", "red", "large", 0.2, 0.5),
               Object("square", "blue", "small", 0.8, 0.5)))
RIGHT = ("there is a large red circle and a small blue square . "
         "the circle is left of the square")
HALF = "there is a large red circle and a small blue square"
WRONG = "there is a large green circle"


def test_root_reward_is_format_times_one_plus_v():
  assert rw.root_reward(RIGHT, SCENE, CFG, "v_strict") == (2.0, 1.0)
  assert rw.root_reward(HALF, SCENE, CFG, "v_strict") == (1.0, 0.0)
  r, v = rw.root_reward(HALF, SCENE, CFG, "v_frac")
  # checklist: 2 kinds + 1 relation; 2 stated, all true: (2 + 1) / (3 + 1)
  assert v == pytest.approx(3 / 4) and r == pytest.approx(1.75)
  assert rw.root_reward("circle circle", SCENE, CFG, "v_frac") == (0.0, 0.0)


@pytest.mark.parametrize("v_prev, reflection, refined, expected", [
    # A right draft: stopping earns the +1 bonus, editing is paid by the change.
    (1.0, edit.STOP, None, (2.0, 1.0, True)),
    (1.0, "add a small red square", HALF, (0.0, 0.0, False)),
    (1.0, "remove the circle is left of the square", RIGHT, (1.0, 1.0, False)),
    # A wrong draft: a fix earns 1 + 1, a false stop only the format reward.
    (0.0, "add the circle is left of the square", RIGHT, (2.0, 1.0, False)),
    (0.0, edit.STOP, None, (1.0, 0.0, True)),
    # Malformed: no format reward; it counts as a stop.
    (0.0, "circle square", None, (0.0, 0.0, True)),
    (0.0, "add the circle is left of the square", None, (0.0, 0.0, False)),
    (0.0, edit.STOP, RIGHT, (0.0, 0.0, True)),
])
def test_branch_reward_and_the_stop_rule(v_prev, reflection, refined, expected):
  got = rw.branch_reward(v_prev, reflection, refined, SCENE, CFG, "v_strict",
                         HALF)
  assert got == expected


def test_final_caption_is_the_draft_unless_a_refined_caption_was_written():
  assert rw.final_caption(HALF, None, True) == HALF
  assert rw.final_caption(HALF, RIGHT, True) == HALF
  # An instruction without a refined caption (malformed) leaves the draft:
  # chain RL scores this caption, and the verifier needs a string.
  assert rw.final_caption(HALF, None, False) == HALF
  assert rw.final_caption(HALF, "", False) == HALF
  assert rw.final_caption(HALF, RIGHT, False) == RIGHT
  assert rw.score(rw.final_caption(HALF, None, False), SCENE, CFG,
                  "v_strict") == 0.0


def test_group_advantages_subtract_the_group_mean_only():
  np.testing.assert_allclose(rw.advantages([2, 0, 1, 1, 3, 2], 3),
                             [1, -1, 0, -1, 1, 0])
  with pytest.raises(ValueError, match="groups of 4"):
    rw.advantages([1, 2, 3], 4)


def test_grpo_matches_a_numpy_reference_and_moves_towards_good_samples():
  rng = np.random.default_rng(0)
  logp = np.log(rng.uniform(0.05, 0.9, (3, 5))).astype(np.float32)
  old = logp + rng.normal(0, 0.3, logp.shape).astype(np.float32)
  ref = logp + rng.normal(0, 0.2, logp.shape).astype(np.float32)
  mask = (rng.random((3, 5)) < 0.7).astype(np.float32)
  adv = np.array([1.0, -0.5, 0.2], np.float32)
  b = {"loss_mask": mask, "advantage": adv, "old_logp": old}
  s = grpo.sums(jnp.asarray(logp), jnp.asarray(ref), b, clip=0.2)
  loss, m = grpo.loss([s], kl_weight=0.1)
  ratio = np.exp(logp - old)
  pg = -np.minimum(ratio * adv[:, None], np.clip(ratio, 0.8, 1.2) * adv[:, None])
  d = ref - logp
  kl = np.exp(d) - d - 1
  n = mask.sum()
  np.testing.assert_allclose(loss, (pg * mask).sum() / n + 0.1 * (kl * mask).sum() / n,
                             rtol=1e-5)
  np.testing.assert_allclose(m["clip_frac"], ((np.abs(ratio - 1) > 0.2) * mask).sum() / n,
                             rtol=1e-6)
  # On-policy (old = current): the gradient raises the log-probability of
  # tokens with a positive advantage and lowers it for a negative one.
  def f(lp):
    b2 = dict(b, old_logp=jax.lax.stop_gradient(lp))
    return grpo.loss([grpo.sums(lp, lp, b2, clip=0.2)], kl_weight=0.0)[0]
  g = np.asarray(jax.grad(f)(jnp.asarray(logp)))
  assert np.all(g[0][mask[0] > 0] < 0) and np.all(g[1][mask[1] > 0] > 0)
  # A KL above the cap is dropped for the step.
  far = grpo.sums(jnp.asarray(logp), jnp.asarray(logp + 20), b, clip=0.2)
  assert float(grpo.loss([far], kl_weight=1.0)[0]) == pytest.approx(
      float(grpo.loss([far], kl_weight=0.0)[0]))


def test_streams_are_normalised_apart_and_weighted():
  """Main stream: 2 tokens; refine stream: 3 tokens of another row, weight
  2: loss = mean over the main tokens + 2 * mean over the refine tokens."""
  logp = jnp.log(jnp.asarray([[0.5, 0.25, 0.5], [0.5, 0.5, 0.25]]))
  main = {"loss_mask": np.array([[1, 1, 0], [0, 0, 0]], np.float32),
          "advantage": np.array([1.0, 0.0], np.float32), "old_logp": logp}
  refine = {"loss_mask": np.array([[0, 0, 0], [1, 1, 1]], np.float32),
            "advantage": np.array([0.0, -0.5], np.float32), "old_logp": logp}
  parts = [grpo.sums(logp, logp, main, clip=0.2)]
  stream = [grpo.sums(logp, logp, refine, clip=0.2)]
  loss, m = grpo.loss(parts, kl_weight=0.1, streams={"refine": (2.0, stream)})
  # rho = 1, KL = 0: pg_t = -A on each trained token.
  assert float(loss) == pytest.approx(-1.0 + 2.0 * 0.5)
  assert float(m["tokens"]) == 2 and float(m["refine/tokens"]) == 3
  assert float(m["refine/pg"]) == pytest.approx(0.5)


def _rl_config(tasks=("caption", "reflect", "refine"), **rl):
  from conftest import tiny_config
  c = tiny_config(tasks)
  c.rl.update(enabled=True, groups=2, group_size=4, **rl)
  c.optim.update(lr=1e-3, warmup_steps=1, end_lr_frac=1.0)
  c.total_steps = 2
  return c


def _fake_scores(monkeypatch):
  """Untrained samples score 0; give them a deterministic, varied score so
  that advantages and gradients are not zero."""
  def score(text, scene, cfg, kind):
    assert isinstance(text, str), text  # what the real verifier needs
    return (hash(text) % 7) / 6.0
  monkeypatch.setattr(rw, "score", score)
  monkeypatch.setattr(rw, "root_reward",
                      lambda d, s, c, k: (1.0 + score(d, s, c, k), score(d, s, c, k)))

  read = rw.read_branch

  def branch(v_prev, reflection, refined, scene, cfg, kind, draft):
    v = score(f"{reflection}|{refined}", scene, cfg, kind)
    return 1.0 + v - v_prev, v, read(reflection, refined)[1]
  monkeypatch.setattr(rw, "branch_reward", branch)
  monkeypatch.setattr(rw, "read_branch", lambda a, b: (True, read(a, b)[1]))


def _run(c, devices, steps):
  mesh, world, setup, init = train_loop.build(c, devices)
  state = init()
  ref = jax.tree.map(jnp.copy, state["params"])
  rl = tree_rl.TreeRL(c, world, setup, optim.schedule(c.optim, c.total_steps))
  ms = []
  for step in range(steps):
    state, m = rl.step(state, ref, step)
    ms.append(m)
  return jax.device_get(state["params"]), ms, rl


def test_chain_rl_step_trains_both_stages_on_one_outcome(monkeypatch):
  _fake_scores(monkeypatch)
  _, ms, rl = _run(_rl_config(mode="chain"), jax.devices()[:1], 1)
  assert ms[0]["grad_norm"] > 0 and ms[0]["rl/stage"] == 2.0
  assert rl.buffer == []  # drafts live for their own step only


def test_rl_steps_on_8_devices_equal_1_device(monkeypatch):
  """A root and a branch step (sampling, scoring, update, and the RL-vs-VQA
  gradient cosine) agree on 1 and 8 devices."""
  _fake_scores(monkeypatch)
  mode = "tree"
  tasks = ("caption", "vqa", "reflect", "refine")
  c1 = _rl_config(tasks, mode=mode)
  c8 = _rl_config(tasks, mode=mode)
  c8.mesh = {"data": 2, "fsdp": 2, "tensor": 2}
  p1, m1, _ = _run(c1, jax.devices()[:1], 2)
  p8, m8, _ = _run(c8, jax.devices()[:8], 2)
  assert m1[0]["grad_norm"] > 0 and m1[1]["grad_norm"] > 0
  assert all(-1 <= m["interf/cos/rl:vqa"] <= 1 for m in m1)
  for a, b in zip(m1, m8):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-5, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4,
                                                       atol=2e-5), p1, p8)


def test_branch_masks_and_perfect_ratio(monkeypatch):
  c = _rl_config(perfect_ratio=1.0, train_reflection=False)
  mesh, world, setup, init = train_loop.build(c, jax.devices()[:1])
  rl = tree_rl.TreeRL(c, world, setup, optim.schedule(c.optim, 2))
  tok = world.tokenizer
  rl.buffer = [tree_rl.Rollout(0, HALF, 0.0), tree_rl.Rollout(1, RIGHT, 1.0)]
  draws = [rl._draw(np.random.default_rng(i)) for i in range(20)]
  assert all(d.v == 1.0 for d in draws)
  c.rl.perfect_ratio = 0.0
  assert all(rl._draw(np.random.default_rng(i)).v == 0.0 for i in range(20))
  # Masks: the stop trains its reflection only; an edit with
  # train_reflection=False trains only REFINED and the eos.
  prompt = [tok.task_id("reflect")] + tok.encode(HALF) + [tok.sep_id]
  stop = (tok.encode(edit.STOP), True)
  fix = (tok.encode("add the circle is left of the square") + [tok.sep_id] +
         tok.encode(RIGHT), True)
  cut = len(tok.encode("add the circle is left of the square"))
  b = rl._sequences([prompt, prompt], [stop, fix], [0, cut + 1], 144,
                    [len(stop[0]) + 1, None])
  trained = [[tok.tokens[t] for t, m in zip(b["targets"][i], b["loss_mask"][i])
              if m] for i in range(2)]
  assert " ".join(trained[0]) == edit.STOP + " <eos>"
  assert " ".join(trained[1]) == RIGHT + " <eos>"
  # As the reference code: the end token untrained, the rest as before.
  c.rl.train_eos = False
  b2 = rl._sequences([prompt, prompt], [stop, fix], [0, cut + 1], 144,
                     [len(stop[0]) + 1, None])
  trained = [[tok.tokens[t] for t, m in zip(b2["targets"][i],
                                            b2["loss_mask"][i]) if m]
             for i in range(2)]
  assert " ".join(trained[0]) == edit.STOP
  assert " ".join(trained[1]) == RIGHT
  np.testing.assert_array_equal(b2["loss_mask"] > 0, (b["loss_mask"] > 0) & (
      b["targets"] != tok.eos_id))


def _branch_with(rl, tok, texts, monkeypatch):
  """One branch group from draft HALF (V = 0) whose rollouts are `texts`
  (reflection [<sep> refined]), scored by the real verifier on SCENE."""
  outs = []
  for t in texts:
    reflection, _, refined = t.partition(" | ")
    ids = tok.encode(reflection) + (
        [tok.sep_id] + tok.encode(refined) if refined else [])
    outs.append((ids, True))
  monkeypatch.setattr(rl, "_sample", lambda *a: outs)
  monkeypatch.setattr(rl, "_scene", lambda row: SCENE)
  draft = tree_rl.Rollout(0, HALF, 0.0)
  return rl.branch(None, 1, jax.random.key(0), [draft], per_draft=len(texts))


def test_refined_captions_have_their_own_advantage(monkeypatch):
  """As in the reference code: a refined caption's tokens are trained on
  V_new - the group's mean V_new (stops counted with V_prev, their refine
  advantage zero), without the format reward or the stop bonus; the
  reflection's tokens (through <sep>) on f (1 + D) - the group mean."""
  c = _rl_config()
  mesh, world, setup, init = train_loop.build(c, jax.devices()[:1])
  rl = tree_rl.TreeRL(c, world, setup, optim.schedule(c.optim, 2))
  tok = world.tokenizer
  add = "add the circle is left of the square"
  batch, m, info = _branch_with(rl, tok, [
      edit.STOP, f"{add} | {RIGHT}", f"{add} | {HALF}", "left the of"],
      monkeypatch)
  b = batch["branch"]
  # Rewards f (1 + D): 1 (stop, D = 0), 2, 1, 0 (malformed); mean 1.
  np.testing.assert_allclose(b["advantage"], [0, 1, 0, -1])
  # V_new: 0 (stop), 1, 0, 0 (malformed = stop); mean 0.25; stops zeroed.
  np.testing.assert_allclose(b["refine_advantage"], [0, 0.75, -0.25, 0])
  assert m["rl/refine_reward"] == pytest.approx(0.25)
  words = lambda mask, i: " ".join(  # noqa: E731
      tok.tokens[t] for t, k in zip(b["targets"][i], mask[i]) if k)
  assert words(b["loss_mask"], 0) == edit.STOP + " <eos>"
  assert words(b["loss_mask"], 1) == add + " <sep>"
  assert words(b["refine_mask"], 1) == RIGHT + " <eos>"
  assert words(b["refine_mask"], 0) == "" == words(b["refine_mask"], 3)


def test_frozen_encoder_and_the_supervised_term(monkeypatch):
  """rl.freeze=("encoder",) leaves every encoder parameter as it was while
  the decoder moves; rl.supervised_weight adds the VQA loss to the step."""
  _fake_scores(monkeypatch)
  tasks = ("caption", "vqa", "reflect", "refine")
  before = _run(_rl_config(tasks, freeze=("encoder",)), jax.devices()[:1], 0)[0]
  after, ms, _ = _run(_rl_config(tasks, freeze=("encoder",)),
                      jax.devices()[:1], 2)
  same = jax.tree.map(np.array_equal, before["encoder"], after["encoder"])
  assert all(jax.tree.leaves(same))
  assert not all(jax.tree.leaves(jax.tree.map(
      np.array_equal, before["decoder"], after["decoder"])))
  assert "loss/vqa" not in ms[0]
  sup, ms_sup, _ = _run(_rl_config(tasks, supervised_weight=1.0),
                        jax.devices()[:1], 2)  # step 0's learning rate is 0
  plain, _, _ = _run(_rl_config(tasks), jax.devices()[:1], 2)
  assert ms_sup[0]["loss/vqa"] > 0
  assert ms_sup[0]["loss"] == pytest.approx(
      ms_sup[0]["loss/vqa"] + ms_sup[0]["pg"] + 0.001 * ms_sup[0]["kl"],
      rel=1e-4)
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, sup, plain)))
  with pytest.raises(ValueError, match=r"freeze=\('vision',\) names"):
    _run(_rl_config(freeze=("vision",)), jax.devices()[:1], 0)


def test_agreement_reward_term(monkeypatch):
  """rl.agreement adds its weight times the caption's VQA agreement
  (grounded.agreement, from the model's own answers) to the root reward and
  to the branch reward of the caption a rollout leaves."""
  _fake_scores(monkeypatch)
  c = _rl_config(("caption", "vqa", "reflect", "refine"), agreement=0.5)
  mesh, world, setup, init = train_loop.build(c, jax.devices()[:1])
  params = init()["params"]
  rl = tree_rl.TreeRL(c, world, setup, optim.schedule(c.optim, 2))
  captions = ["there is a large red circle and a small blue square",
              "there is a large green circle", "a red circle"]
  agree = rl.agreement(params, [0, 1, 0], captions)
  n_slots = [len(grounded.slots(t, world.world, rl._scene(r)))
             for t, r in zip(captions, [0, 1, 0])]
  assert n_slots[2] == 0 and agree[2] == 0.0  # nothing confirmed
  for a, n in zip(agree[:2], n_slots[:2]):
    assert 0 <= a <= 1 and round(a * n, 6) == round(a * n)
  # The root reward: the verifier's plus 0.5 x agreement.
  batch, m = rl.root(params, 0, jax.random.key(0))
  drafts = [r.draft for r in rl.buffer]
  rows = [r.record for r in rl.buffer]
  base = [rw.root_reward(d, None, None, None)[0] for d in drafts]
  want = np.asarray(base) + 0.5 * rl.agreement(params, rows, drafts)
  np.testing.assert_allclose(m["rl/reward"], want.mean(), rtol=1e-6)
  assert 0 <= m["rl/agreement"] <= 1
  bb, mb, info = rl.branch(params, 1, jax.random.key(1))
  assert len(info["agreement"]) == len(info["final"]) and 0 <= mb[
      "rl/agreement"] <= 1
  # The refined caption's stream: V_new + 0.5 x its agreement - group mean.
  edited = 1.0 - np.asarray(info["stop"], np.float32)
  np.testing.assert_allclose(bb["branch"]["refine_advantage"], rw.advantages(
      np.asarray(info["v"]) + 0.5 * np.asarray(info["agreement"]),
      c.rl.group_size) * edited, rtol=1e-6, atol=1e-7)


def test_rl_run_stops_after_the_pair_and_resumes_exactly(monkeypatch,
                                                        tmp_path):
  """run.train with config.rl on: a SIGTERM during root step 3 stops the run
  after branch step 4, with its checkpoint; rerunning ends where an
  uninterrupted run does, bit for bit, with the same metrics rows."""
  from r3jax import run  # noqa: PLC0415
  _fake_scores(monkeypatch)
  c = _rl_config()
  c.total_steps, c.ckpt_every_steps, c.eval_every_steps = 6, 2, 100
  c.keep_ckpts, c.evals.max_examples = 3, 4
  c.final_eval.max_examples = 4
  one = jax.devices()[:1]
  full = run.train(c, str(tmp_path / "full"), one)
  real = tree_rl.TreeRL.step

  def signalled(self, state, ref_params, step):
    if step == 2:  # the root step that makes step 3
      os.kill(os.getpid(), signal.SIGTERM)
    return real(self, state, ref_params, step)

  monkeypatch.setattr(tree_rl.TreeRL, "step", signalled)
  with pytest.raises(preemption.Preempted, match="after step 4;"):
    run.train(c, str(tmp_path / "cut"), one)
  monkeypatch.setattr(tree_rl.TreeRL, "step", real)
  resumed = run.train(c, str(tmp_path / "cut"), one)
  drop = lambda r: {k: v for k, v in r.items()  # noqa: E731
                    if "seconds" not in k}
  assert drop(full) == drop(resumed)
  _, _, setup, _ = train_loop.build(c, one)
  states = []
  for d in ("full", "cut"):
    ck = Checkpointer(str(tmp_path / d / "checkpoints"), 3, 2)
    assert ck.all_steps() == [2, 4, 6]
    states.append(jax.device_get(ck.restore(setup.abstract)[0]))
    ck.close()
  jax.tree.map(np.testing.assert_array_equal, *states)
  rows = [[drop(r) for r in metrics_lib.read(str(tmp_path / d))]
          for d in ("full", "cut")]
  assert rows[0] == rows[1]
  assert [r["step"] for r in rows[0] if "loss" in r] == list(range(1, 7))
