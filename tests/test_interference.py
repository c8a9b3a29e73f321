"""Interference measurement: Gram statistics, per-task gradient engines and the
instrumented step, against independent computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r3jax import sharding
from r3jax.data import pipeline
from r3jax.interference import gram as gram_lib
from r3jax.interference import grads as grads_lib
from r3jax.interference import groups as groups_lib
from r3jax.interference import step as interference_step
from r3jax.run import loop
from r3jax.train import losses as losses_lib
from r3jax.train import optim
from r3jax.train import state as state_lib
from r3jax.run import world_setup

TASKS = ("a", "b")


def _stats(g_a, g_b, groups=(0, 0)):
  grams = gram_lib.group_grams([g_a, g_b], list(groups), max(groups) + 1)
  return gram_lib.statistics(grams, [f"g{i}" for i in range(max(groups) + 1)],
                             TASKS)


@pytest.mark.parametrize("sign,expected", [(1.0, 1.0), (-1.0, -1.0)])
def test_identical_and_negated_objectives(sign, expected):
  g = {"w": jnp.arange(1.0, 7.0).reshape(2, 3), "b": jnp.array([0.5, -2.0])}
  s = _stats(g, jax.tree.map(lambda x: sign * 3 * x, g))
  np.testing.assert_allclose(s["interf/cos/a:b"], expected, atol=1e-6)
  np.testing.assert_allclose(s["interf/norm_ratio/a:b"], 1 / 3, rtol=1e-6)
  # Magnitude similarity of norms 1 : 3 is 2*3/(1+9).
  np.testing.assert_allclose(s["interf/magsim/a:b"], 0.6, rtol=1e-6)
  assert float(s["interf/conflict@0/a:b"]) == float(sign < 0)


def test_orthogonal_objectives_and_group_contributions():
  g_a = {"w": jnp.array([1.0, 0.0]), "v": jnp.array([2.0, 1.0])}
  g_b = {"w": jnp.array([0.0, 5.0]), "v": jnp.array([-1.0, 2.0])}
  s = _stats(g_a, g_b)
  np.testing.assert_allclose(s["interf/cos/a:b"], 0.0, atol=1e-7)
  # Per group: leaves sort as ("v", "w"); give them their own groups.
  s = _stats(g_a, g_b, groups=(0, 1))
  np.testing.assert_allclose(s["group/g0/cos/a:b"], 0.0, atol=1e-7)
  np.testing.assert_allclose(s["group/g1/cos/a:b"], 0.0, atol=1e-7)
  # A conflicting and an agreeing group whose contributions cancel exactly.
  g_b = {"w": jnp.array([1.0, 0.0]), "v": jnp.array([-2.0, -1.0])}
  s = _stats(g_a, g_b, groups=(0, 1))
  ga, gb = [np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])
            for g in (g_a, g_b)]
  cos = ga @ gb / np.linalg.norm(ga) / np.linalg.norm(gb)
  np.testing.assert_allclose(s["interf/cos/a:b"], cos, atol=1e-6)
  np.testing.assert_allclose(s["group/g0/cos/a:b"], -1.0, atol=1e-6)
  np.testing.assert_allclose(s["group/g1/cos/a:b"], 1.0, atol=1e-6)
  np.testing.assert_allclose(
      s["group/g0/contrib/a:b"] + s["group/g1/contrib/a:b"], cos, atol=1e-6)


def test_statistics_match_numpy_on_random_gradients():
  rng = np.random.default_rng(0)
  grads = [{"x": rng.normal(size=(4, 5)).astype(np.float32),
            "y": rng.normal(size=(7,)).astype(np.float32)} for _ in range(3)]
  grams = gram_lib.group_grams(grads, [0, 1], 2)
  s = gram_lib.statistics(grams, ["x", "y"], ("p", "q", "r"))
  flat = [np.concatenate([g["x"].ravel(), g["y"]]) for g in grads]
  for (i, a), (j, b) in [((0, "p"), (1, "q")), ((0, "p"), (2, "r")),
                         ((1, "q"), (2, "r"))]:
    cos = flat[i] @ flat[j] / np.linalg.norm(flat[i]) / np.linalg.norm(flat[j])
    np.testing.assert_allclose(s[f"interf/cos/{a}:{b}"], cos, rtol=1e-5)
    cy = grads[i]["y"] @ grads[j]["y"]
    np.testing.assert_allclose(
        s[f"group/y/cos/{a}:{b}"],
        cy / np.linalg.norm(grads[i]["y"]) / np.linalg.norm(grads[j]["y"]),
        rtol=1e-5)
  sv = np.linalg.svd(np.stack(flat), compute_uv=False)
  np.testing.assert_allclose(s["interf/kappa"], sv[0] / sv[-1], rtol=1e-3)


def test_halves_combine_to_the_task_gram_and_null_statistics():
  rng = np.random.default_rng(1)
  halves = [{"x": rng.normal(size=(6,)).astype(np.float32)} for _ in range(4)]
  frac = jnp.array([0.25, 0.6])
  grams = gram_lib.combine_halves(gram_lib.group_grams(halves, [0], 1), frac)
  full = [0.25 * halves[0]["x"] + 0.75 * halves[1]["x"],
          0.6 * halves[2]["x"] + 0.4 * halves[3]["x"]]
  np.testing.assert_allclose(grams[0], np.stack(full) @ np.stack(full).T,
                             rtol=1e-5)
  # Identical halves: the null cosine is 1 and the debiased cosine equals the
  # raw one (no noise to remove).
  same = [halves[0], halves[0], halves[2], halves[2]]
  k = gram_lib.group_grams(same, [0], 1).sum(0)
  t = gram_lib.combine_halves(k[None], frac)[0]
  s = gram_lib.null_statistics(k, t, TASKS)
  np.testing.assert_allclose(s["interf/null_cos/a"], 1.0, atol=1e-6)
  x, y = halves[0]["x"], halves[2]["x"]
  np.testing.assert_allclose(s["interf/debiased_cos/a:b"],
                             x @ y / np.linalg.norm(x) / np.linalg.norm(y),
                             rtol=1e-5)


@pytest.fixture
def tiny(tiny):
  """The tiny config with the instrumented step (interference statistics)."""
  def make(*args, **kw):
    c = tiny(*args, **kw)
    c.interference.enabled = True
    return c
  return make


def test_default_groups_cover_the_model_in_forward_order(tiny):
  world = world_setup.load(tiny())
  params = state_lib.abstract_params(world.make_model)
  leaf_groups, names = groups_lib.assign(params)
  assert len(leaf_groups) == len(jax.tree.leaves(params))
  assert names[0] == "enc/embed" and names[-1] == "dec/head"
  assert "dec/block0/cross_attn" in names and "enc/block0" in names
  with pytest.raises(ValueError, match="no interference group rule"):
    groups_lib.assign(params, [(r"^encoder/", "enc")])


def _setup(config, devices=None):
  mesh, world, setup, init = loop.build(config, devices or jax.devices()[:1])
  data = pipeline.TrainData(world.train_source, world.tokenizer, config.tasks,
                            config.seed, mesh, layout=config.data.layout)
  return mesh, world, setup, init, data


@pytest.mark.parametrize("per_image", [1, 2])
def test_split_gradients_sum_to_the_joint_gradient(tiny, per_image):
  c = tiny()
  c.tasks.vqa.per_image = c.tasks.ita.per_image = per_image
  mesh, _, setup, init, data = _setup(c)
  weights = {k: t.weight * (i + 1) for i, (k, t) in
             enumerate(sorted(c.tasks.items()))}
  with jax.set_mesh(mesh), sharding.use_rules(mesh, setup.rules):
    state, batch = init(), next(data)

    def joint(params):
      losses, _ = losses_lib.task_losses(setup.model(params), batch)
      return losses_lib.weighted_total(losses, weights)

    want = jax.jit(jax.grad(joint))(state["params"])
    for halves in (False, True):
      tg = jax.jit(lambda p, b, h=halves: grads_lib.split(setup.model, p, b, h)
                   )(state["params"], batch)
      got = jax.tree.map(lambda *g: sum(weights[t] * x for t, x in
                                        zip(tg.tasks, g)), *tg.grads)
      for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    # The halves really are different samples: their cosine is not 1.
    k = gram_lib.group_grams(tg.halves, [0] * len(jax.tree.leaves(want)), 1)[0]
    assert float(k[0, 1]) < 0.999 * float(jnp.sqrt(k[0, 0] * k[1, 1]))
    # Half a is the even images with all their text rows.
    b = batch["vqa"]
    n_img = b["image"].shape[0]
    assert n_img * per_image == b["tokens"].shape[0]
    rows = np.array([i * per_image + j for i in range(0, n_img, 2)
                     for j in range(per_image)])
    half = {key: jnp.asarray(np.asarray(v)[np.arange(0, n_img, 2) if
                                           key == "image" else rows])
            for key, v in b.items()}
    want_a = jax.jit(jax.grad(lambda p: grads_lib.task_loss(
        setup.model, half, "vqa")(p)[0]))(state["params"])
    got_a = tg.halves[2 * tg.tasks.index("vqa")]
    for a, b in zip(jax.tree.leaves(want_a), jax.tree.leaves(got_a)):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_shared_input_gradients_equal_separate_grads(tiny):
  c = tiny()
  c.data.layout = "shared"
  for t in c.tasks.values():
    t.batch_size = 4
  c.interference.halves = False
  mesh, _, setup, init, data = _setup(c)
  with jax.set_mesh(mesh), sharding.use_rules(mesh, setup.rules):
    state, batch = init(), next(data)
    images = [np.asarray(b["image"]) for b in batch.values()]
    assert all((x == images[0]).all() for x in images)
    tg = jax.jit(lambda p, b: grads_lib.shared(setup.model, p, b))(
        state["params"], batch)
    for t, got in zip(tg.tasks, tg.grads):
      want = jax.jit(jax.grad(lambda p, t=t: grads_lib.task_loss(
          setup.model, batch[t], t)(p)[0]))(state["params"])
      for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    assert tg.feature_grads[0].shape[0] == 4


@pytest.mark.parametrize("layout", ["split", "shared"])
def test_instrumented_update_equals_plain_update(tiny, layout):
  c = tiny()
  c.data.layout = layout
  c.interference.halves = layout == "split"
  if layout == "shared":
    for t in c.tasks.values():
      t.batch_size = 4
  mesh, world, setup, init, data = _setup(c)
  plain_c = c.copy_and_resolve_references()
  plain_c.interference.enabled = False
  plain = loop.make_update(plain_c, setup, world.make_model)
  instrumented = loop.make_update(c, setup, world.make_model)
  with jax.set_mesh(mesh):
    batch = next(data)
    s1, m1 = plain(init(), batch)
    s2, m2 = instrumented(init(), batch)
  for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for k in m1:
    np.testing.assert_allclose(m1[k], m2[k], rtol=1e-4, err_msg=k)
  for t in c.tasks:
    assert float(m2[f"weights/{t}"]) == c.tasks[t].weight
    assert -1 <= float(m2[f"interf/align/{t}"]) <= 1
  assert "interf/cos/caption:vqa" in m2 and "group/dec/head/cos/caption:vqa" in m2
  assert ("interf/null_cos/vqa" in m2) == (layout == "split")


def test_probe_reports_every_task_pair(tiny):
  c = tiny()
  mesh, world, setup, init, data = _setup(c)
  probe = interference_step.make_probe(
      setup, loop.make_instrument(c, world.make_model),
      optim.schedule(c.optim, c.total_steps))
  update = loop.make_update(c, setup, world.make_model)
  with jax.set_mesh(mesh):
    state = init()
    for _ in range(2):  # past the first step, whose learning rate is 0
      state, _ = update(state, next(data))
    m = jax.device_get(probe(state, next(data)))
  assert len(m) == len(c.tasks) ** 2
  # A step on a task lowers that task's own loss on the same batch.
  for t in c.tasks:
    assert m[f"transfer/{t}->{t}"] > 0
