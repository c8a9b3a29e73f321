"""The learning-rate schedule as data: the rates and the updates equal
optax's warmup-cosine AdamW bit for bit (the rates with XLA's default
settings, tests/optim_rates.py), and runs that differ only in their schedule
compile one program."""

import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from conftest import ROOT, tiny_config
from optim_rates import CASES, config, rates
from r3jax.data import pipeline
from r3jax.run import loop
from r3jax.train import optim
from r3jax.train import step as step_lib


@pytest.fixture(scope="module")
def default_rates(tmp_path_factory):
  """optim_rates.py's rates, computed with XLA's default flags on the CPU."""
  out = tmp_path_factory.mktemp("rates") / "rates.npz"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  subprocess.run([sys.executable, os.path.join(ROOT, "tests", "optim_rates.py"),
                  str(out)], env=env, cwd=ROOT, check=True)
  return dict(np.load(out))


@pytest.mark.parametrize("case", range(len(CASES)),
                         ids=[str(c) for c in CASES])
def test_rates_equal_optax_schedule_bit_for_bit(default_rates, case):
  """Every count vmapped, and about 25 counts one at a time as a step
  computes them, with XLA's default settings. Under the suite's own flags
  XLA:CPU rounds our multiply-adds where optax's program of constants keeps
  them fused (optim_rates.py): equal to 1e-5 there."""
  got = {k.split("/")[1]: v for k, v in default_rates.items()
         if k.startswith(f"{case}/")}
  np.testing.assert_array_equal(got["ours"], got["ref"])
  np.testing.assert_array_equal(got["one"], got["one_ref"])
  here = {k: v.view(np.float32) for k, v in rates(CASES[case]).items()}
  np.testing.assert_allclose(here["ours"], here["ref"], rtol=1e-5, atol=0)
  np.testing.assert_allclose(here["one"], here["one_ref"], rtol=1e-5, atol=0)


def test_negative_warmup_is_an_error():
  with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
    optim.schedule(config(1e-3, -1, 0.1), 10)


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
  """Under the suite's flags too: with warmup 2 the warmup's multiply-add is
  exact, and this schedule's decay rates at counts 2-4 round alike."""
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
