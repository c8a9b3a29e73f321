"""The learning-rate schedule as data: the rates and the updates equal
optax's warmup-cosine AdamW bit for bit, and runs that differ only in their
schedule compile one program."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import tiny_config
from r3jax.data import pipeline
from r3jax.run import loop
from r3jax.train import optim
from r3jax.train import step as step_lib

# (lr, warmup_steps, total_steps, end_lr_frac): the defaults, the study and
# RL settings, no warmup, lr 0, warmup longer than the run, odd values.
CASES = [(2e-3, 50, 1000, 0.01), (2.5e-4, 100, 1975, 0.01),
         (5e-5, 10, 200, 1.0), (5e-4, 100, 3000, 0.01), (1e-3, 0, 7, 0.1),
         (0.0, 3, 10, 0.5), (3e-4, 5, 3, 0.01), (1e-2, 1, 2, 0.0),
         (7.3e-4, 13, 977, 0.37), (1.25e-3, 1, 3353, 0.647)]


def _cfg(lr, warmup, end_frac):
  return ml_collections.ConfigDict(dict(lr=lr, warmup_steps=warmup,
                                        end_lr_frac=end_frac))


def _bits(x):
  return np.asarray(x, np.float32).view(np.int32)


@pytest.mark.parametrize("lr, warmup, total, end_frac", CASES)
def test_rates_equal_optax_schedule_bit_for_bit(lr, warmup, total, end_frac):
  ref = optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup, max(total, warmup + 1), lr * end_frac)
  s = optim.schedule(_cfg(lr, warmup, end_frac), total)
  counts = jnp.arange(max(total, warmup + 1) + 3, dtype=jnp.int32)
  ours = jax.jit(jax.vmap(optim.learning_rate, (None, 0)))(s, counts)
  np.testing.assert_array_equal(_bits(ours), _bits(jax.jit(jax.vmap(ref))(
      counts)))
  # One count at a time, as a step computes it.
  one_ref, one = jax.jit(ref), jax.jit(optim.learning_rate)
  for c in counts[::max(1, len(counts) // 25)]:
    assert _bits(one(s, c)) == _bits(one_ref(c)), int(c)


def test_negative_warmup_is_an_error():
  with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
    optim.schedule(_cfg(1e-3, -1, 0.1), 10)


def _run(c, steps, reference=False):
  """`steps` updates of the tiny model on one data stream: through
  step.make_update, or (reference) through optax.adamw with its schedule
  inside, as the optimizer was built before the schedule became data."""
  mesh, world, setup, init = loop.build(c, jax.devices()[:1])
  data = pipeline.TrainData(world.train_source, world.tokenizer, c.tasks,
                            c.seed, mesh)
  weights = {k: t.weight for k, t in c.tasks.items()}
  direction = step_lib.weighted_sum(setup, weights)
  o = c.optim
  if reference:
    tx = optax.chain(optax.clip_by_global_norm(o.clip_norm), optax.adamw(
        optax.warmup_cosine_decay_schedule(
            0.0, o.lr, o.warmup_steps, max(c.total_steps, o.warmup_steps + 1),
            o.lr * o.end_lr_frac), b1=o.b1, b2=o.b2, eps=o.eps,
        weight_decay=o.weight_decay,
        mask=lambda p: optim.decay_mask(p, o.no_decay)))

    @jax.jit
    def update(state, batch):
      d = direction(state, batch)
      u, opt = tx.update(d.grads, state["opt"], state["params"])
      return {**state, "step": state["step"] + 1, "opt": opt,
              "params": optax.apply_updates(state["params"], u)}
  else:
    make = step_lib.make_update(setup, direction,
                                optim.schedule(o, c.total_steps))
    update = lambda state, batch: make(state, batch)[0]  # noqa: E731
  with jax.set_mesh(mesh):
    state = init()
    for _ in range(steps):
      state = update(state, next(data))
    return jax.device_get(state)


def test_updates_equal_optax_adamw_with_its_schedule_bit_for_bit():
  c = tiny_config()
  c.total_steps, c.optim.warmup_steps = 5, 2
  c.optim.lr, c.optim.end_lr_frac = 3.3e-3, 0.07
  ours, ref = _run(c, 5), _run(c, 5, reference=True)
  flat = jax.tree_util.tree_flatten_with_path(ref)[0]
  mine = dict(jax.tree_util.tree_flatten_with_path(ours)[0])
  for path, x in flat:  # the optimizer state's structure too
    np.testing.assert_array_equal(mine[path], x,
                                  err_msg=jax.tree_util.keystr(path))


def test_runs_differing_only_in_schedule_share_one_program():
  def lowered(total, warmup, lr):
    c = tiny_config()
    c.total_steps, c.optim.warmup_steps, c.optim.lr = total, warmup, lr
    mesh, world, setup, _ = loop.build(c, jax.devices()[:1])
    update = loop.make_update(c, setup, world.make_model)
    data = pipeline.TrainData(world.train_source, world.tokenizer, c.tasks,
                              c.seed, mesh)
    with jax.set_mesh(mesh):
      return update.lower(setup.abstract, next(data)).as_text()

  assert lowered(2, 1, 1e-3) == lowered(40, 7, 3e-4)
