"""Aggregation methods against references built from explicit gradient vectors
(numpy, float64) and scipy solvers; every method call goes through jax.jit."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from r3jax.interference import methods


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def _inputs(j_TxP, *, cols=None, names=None, losses=None, base=None, seed=0,
            feature_TxF=None):
  """Inputs from explicit per-task gradients (rows of j). `cols` splits the
  coordinates into parameter groups (default: two halves "a", "b"); the
  feature Gram defaults to the Gram. Shared defaults share compilations."""
  j = np.asarray(j_TxP, np.float64)
  t, p = j.shape
  if cols is None:
    cols = [np.arange(p // 2), np.arange(p // 2, p)]
    names = names or ("a", "b")
  names = tuple(names or (f"g{k}" for k in range(len(cols))))
  grams = np.stack([j[:, c] @ j[:, c].T for c in cols])
  f = j if feature_TxF is None else np.asarray(feature_TxF, np.float64)
  return methods.Inputs(
      gram_TxT=_f32(grams.sum(0)), grams_GxTxT=_f32(grams), group_names=names,
      losses_T=_f32(np.ones(t) if losses is None else losses),
      base_weights_T=_f32(np.ones(t) if base is None else base),
      key=jax.random.key(seed), step=jnp.int32(0),
      feature_gram_TxT=_f32(f @ f.T))


@functools.lru_cache(maxsize=None)
def _jitted(method):
  return jax.jit(method.__call__)


def _call(method, inp, state=None):
  if state is None:
    state = method.init(inp.gram_TxT.shape[0], inp.grams_GxTxT.shape[0])
  w, new, extra = _jitted(method)(inp, state)
  return np.asarray(w, np.float64), new, {k: float(v) for k, v in extra.items()}


_orders_jit = jax.jit(methods._orders, static_argnums=(1, 2))


def _orders(seed, t, groups=None):
  """The methods' random visiting orders (the references replay them)."""
  return np.asarray(_orders_jit(jax.random.key(seed), t, groups))


def _conflicting(rng, t, p):
  """Random gradients whose last one opposes the others' sum: several pairs
  conflict, PCGrad's result depends on the order and the mean conflicts."""
  j = rng.normal(size=(t, p))
  j[-1] = -0.8 * j[:-1].sum(0) + 0.3 * rng.normal(size=p)
  return j


def _adam(p, g, m, v, k, lr, b1=0.9, b2=0.999, eps=1e-8):
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * g * g
  step = lr * (m / (1 - b1 ** k)) / (np.sqrt(v / (1 - b2 ** k)) + eps)
  return p - step, m, v


def _simplex_min(fn, t, rng, starts=10):
  """Best SLSQP minimum of fn over the simplex from several starts."""
  best = None
  for _ in range(starts):
    res = optimize.minimize(
        fn, rng.dirichlet(np.ones(t)), method="SLSQP", bounds=[(0, 1)] * t,
        constraints=({"type": "eq", "fun": lambda x: 1 - x.sum()},),
        options=dict(ftol=1e-15, maxiter=1000))
    if best is None or res.fun < best.fun:
      best = res
  return best.x, best.fun


# --- registry and helper ------------------------------------------------


def test_make_errors_name_the_problem():
  with pytest.raises(ValueError, match=r"'nope'.*known:.*pcgrad.*upgrad"):
    methods.make("nope")
  with pytest.raises(TypeError, match=r"'pcgrad'.*'alpha'.*per_group"):
    methods.make("pcgrad", alpha=1.0)
  with pytest.raises(ValueError, match="normalize"):
    methods.make("mgda", normalize="l3")
  with pytest.raises(ValueError, match="rescale"):
    methods.make("cagrad", rescale=3)
  with pytest.raises(ValueError, match="scale"):
    methods.make("aligned_mtl", scale="max")
  with pytest.raises(ValueError, match="dist"):
    methods.make("rlw", dist="uniform")
  with pytest.raises(ValueError, match="at most 8 tasks"):
    methods.make("mgda").init(9, 1)
  with pytest.raises(ValueError, match="at most 8 tasks"):
    _call(methods.make("upgrad"), _inputs(np.eye(9)))
  assert methods.make("cagrad", c=0.2).c == 0.2


def test_log_ratio_grid():
  g = methods.log_ratio_grid(5, 0.1, 10.0)
  np.testing.assert_allclose(g, [0.1, 10 ** -0.5, 1.0, 10 ** 0.5, 10.0])
  assert 1.0 in g
  g = methods.log_ratio_grid(4, 0.1, 10.0)  # 1 is not on the grid: added
  assert len(g) == 5 and 1.0 in g and g == sorted(g)
  np.testing.assert_allclose(np.diff(np.log([x for x in g if x != 1.0])),
                             np.log(100) / 3)
  assert methods.log_ratio_grid(3, 2.0, 8.0) == pytest.approx([2.0, 4.0, 8.0])
  with pytest.raises(ValueError, match="lo"):
    methods.log_ratio_grid(3, 0.0, 1.0)


def _all_methods():
  return [methods.make(n) for n in sorted(methods.METHODS)] + [
      methods.make("pcgrad", per_group=True),
      methods.make("gradvac", per_group=False),
      methods.make("mgda", normalize="loss+"),
      methods.make("aligned_mtl", scale="median")]


@pytest.mark.parametrize("case", ["zero", "rank1_mixed", "rank1_same"])
def test_degenerate_grams_give_finite_weights(case):
  v = np.arange(1.0, 7.0)
  j = {"zero": np.zeros((3, 6)),
       "rank1_mixed": np.outer([1.0, -2.0, 0.5], v),
       "rank1_same": np.outer([1.0, 2.0, 0.5], v)}[case]
  inp = _inputs(j, losses=[0.5, 1.0, 2.0])
  for m in _all_methods():
    state = m.init(3, 2)
    for _ in range(2):  # the second call sees a non-initial state
      w, state, extra = _call(m, inp, state)
      assert w.shape == ((2, 3) if m.per_group else (3,)), m
      assert np.all(np.isfinite(w)), (m, w)
      assert all(np.isfinite(x) for x in extra.values()), (m, extra)
      assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state)), m


def test_state_keeps_its_structure_and_calls_are_deterministic():
  rng = np.random.default_rng(0)
  inp = _inputs(rng.normal(size=(3, 8)), losses=[1.0, 2.0, 3.0])
  for m in _all_methods():
    init = m.init(3, 2)
    w1, new, _ = _call(m, inp, init)
    w2, _, _ = _call(m, inp, init)
    np.testing.assert_array_equal(w1, w2)
    assert jax.tree.structure(new) == jax.tree.structure(init), m
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(init)):
      assert (a.shape, a.dtype) == (jnp.shape(b), jnp.asarray(b).dtype), m


# --- simple weightings ----------------------------------------------------


def test_weighted_sum_returns_base_weights():
  w, _, _ = _call(methods.make("weighted_sum"),
                  _inputs(np.eye(3), base=[0.2, 1.0, 3.0]))
  np.testing.assert_allclose(w, [0.2, 1.0, 3.0])


@pytest.mark.parametrize("dist", ["normal", "dirichlet"])
def test_rlw_scale_and_distribution(dist):
  m = methods.make("rlw", dist=dist)
  inp = _inputs(np.eye(2))
  sample = jax.jit(jax.vmap(
      lambda k: m(dataclasses.replace(inp, key=k), {})[0]))
  w = np.asarray(sample(jax.random.split(jax.random.key(1), 4000)), np.float64)
  np.testing.assert_allclose(w.sum(1), 2.0, rtol=1e-5)
  assert np.all(w > 0)
  np.testing.assert_allclose(w.mean(0), 1.0, atol=0.05)
  if dist == "normal":  # log(w1 / w2) = z1 - z2 ~ N(0, 2)
    assert np.var(np.log(w[:, 0] / w[:, 1])) == pytest.approx(2.0, rel=0.1)
  else:  # w1 / 2 ~ U(0, 1)
    assert np.var(w[:, 0] / 2) == pytest.approx(1 / 12, rel=0.1)
  assert len(np.unique(w[:, 0])) > 3990  # every key its own draw


def test_uw_matches_adam_reference():
  m = methods.make("uw")
  losses = [np.array([0.5, 2.0, 4.0]), np.array([0.4, 1.5, 5.0])]
  s, mom, vel = np.zeros(3), np.zeros(3), np.zeros(3)
  state = m.init(3, 1)
  for k, loss in enumerate(losses, 1):
    w, state, _ = _call(m, _inputs(np.eye(3), losses=loss), state)
    np.testing.assert_allclose(w, 0.5 * np.exp(-s), rtol=1e-6)
    s, mom, vel = _adam(s, -0.5 * np.exp(-s) * loss + 0.5, mom, vel, k, 1e-2)
    np.testing.assert_allclose(state["log_var_T"], s, rtol=1e-5, atol=1e-7)


def test_uw_sgd_settles_at_log_loss():
  m = methods.make("uw", optimizer="sgd", lr=0.5)
  loss = np.array([0.5, 2.0, 4.0])
  inp, state = _inputs(np.eye(3), losses=loss), m.init(3, 1)
  for _ in range(100):
    w, state, _ = _call(m, inp, state)
  np.testing.assert_allclose(state["log_var_T"], np.log(loss), atol=1e-5)
  np.testing.assert_allclose(w, 0.5 / loss, rtol=1e-4)


# --- GradNorm -------------------------------------------------------------


def _gradnorm_ref(w, gram, loss, loss0, alpha, lr):
  gn = np.sqrt(np.diag(gram))
  n = w * gn
  ratio = loss / loss0
  target = n.mean() * (ratio / ratio.mean()) ** alpha
  w = np.maximum(w - lr * np.sign(n - target) * gn, 1e-6)
  return w * len(w) / w.sum()


def test_gradnorm_matches_reference_and_keeps_initial_losses():
  rng = np.random.default_rng(1)
  j = rng.normal(size=(3, 9)) * np.array([[1.0], [3.0], [0.3]])
  cols = [np.arange(3), np.arange(3, 6), np.arange(6, 9)]
  names = ("enc", "dec/block0", "dec/head")
  gram_b = j[:, 3:6] @ j[:, 3:6].T  # default W: last group that is no head
  m = methods.make("gradnorm", optimizer="sgd", lr=0.1)
  losses = [np.array([2.0, 1.0, 3.0]), np.array([1.0, 0.9, 2.0]),
            np.array([0.5, 0.8, 1.8])]
  w_ref, state = np.ones(3), m.init(3, 3)
  for loss in losses:
    w, state, extra = _call(m, _inputs(j, cols=cols, names=names, losses=loss),
                            state)
    np.testing.assert_allclose(w, w_ref, rtol=1e-5)
    w_ref = _gradnorm_ref(w_ref, gram_b, loss, losses[0], 1.5, 0.1)
    np.testing.assert_allclose(state["w_T"], w_ref, rtol=1e-5)
  np.testing.assert_allclose(state["loss0_T"], losses[0])
  assert extra["loss"] > 0
  # An explicit group changes W; unknown names and all-head groups fail.
  m_enc = methods.make("gradnorm", group="enc", optimizer="sgd", lr=0.1)
  _, s_enc, _ = _call(m_enc, _inputs(j, cols=cols, names=names,
                                     losses=losses[0]))
  assert not np.allclose(s_enc["w_T"], _gradnorm_ref(
      np.ones(3), gram_b, losses[0], losses[0], 1.5, 0.1))
  with pytest.raises(ValueError, match="'nope'.*enc"):
    _call(methods.make("gradnorm", group="nope"),
          _inputs(j, cols=cols, names=names))
  with pytest.raises(ValueError, match="head"):
    _call(methods.make("gradnorm"), _inputs(j, names=("head",)))


def test_gradnorm_adam_state_moves_and_keeps_sum():
  m = methods.make("gradnorm")
  # Group "b" (the last two coordinates) holds norms 1, 4, 2.
  j = np.array([[1.0, 0, 1, 0], [0, 4, 0, 4], [2, 0, 0, 2]])
  state = m.init(3, 2)
  for loss in ([1.0, 1.0, 1.0], [0.5, 1.0, 1.0]):
    _, state, _ = _call(m, _inputs(j, losses=loss), state)
  w = np.asarray(state["w_T"])
  assert w[0] > 1 > w[1]  # the small gradient is scaled up
  np.testing.assert_allclose(w.sum(), 3.0, rtol=1e-6)


# --- PCGrad ---------------------------------------------------------------


def _pcgrad_ref(j, order):
  d = np.zeros(j.shape[1])
  for i in range(len(j)):
    g = j[i].copy()
    for k in order[i]:
      if k != i and g @ j[k] < 0:
        g -= (g @ j[k]) / (j[k] @ j[k]) * j[k]
    d += g
  return d


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pcgrad_matches_vector_projection(seed):
  j = _conflicting(np.random.default_rng(seed), 3, 6)
  w, _, extra = _call(methods.make("pcgrad"), _inputs(j, seed=seed))
  order = _orders(seed, 3)
  d = _pcgrad_ref(j, order)
  np.testing.assert_allclose(j.T @ w, d, atol=1e-5 * np.abs(d).max())
  assert not np.allclose(d, _pcgrad_ref(j, order[:, ::-1]))  # order matters
  assert 0 < extra["conflict_frac"] <= 1


def test_pcgrad_two_tasks_closed_form():
  j = np.array([[3.0, 0.5, 0.0], [-1.0, 0.2, 0.4]])  # conflict, unequal norms
  g = j @ j.T
  w, _, _ = _call(methods.make("pcgrad"), _inputs(j))
  # g1^PC divides by ||g2||^2 and adds to g2's weight: w_1 gets G11.
  closed = 1 - min(0.0, g[0, 1]) / np.array([g[0, 0], g[1, 1]])
  np.testing.assert_allclose(w, closed, rtol=1e-5)
  np.testing.assert_allclose(j.T @ closed, _pcgrad_ref(j, [[1], [0]]),
                             rtol=1e-12)


def test_pcgrad_opposing_cancel_and_agreeing_sum():
  g1 = np.array([1.0, -2.0, 0.5])
  w, _, _ = _call(methods.make("pcgrad"), _inputs(np.stack([g1, -g1])))
  np.testing.assert_allclose(np.stack([g1, -g1]).T @ w, 0.0, atol=1e-5)
  j = np.abs(np.random.default_rng(3).normal(size=(3, 5)))  # all dots > 0
  w, _, extra = _call(methods.make("pcgrad"), _inputs(j))
  np.testing.assert_allclose(w, 1.0)
  assert extra["conflict_frac"] == 0


def test_pcgrad_per_group_is_layerwise_surgery():
  # Group a conflicts, group b agrees strongly: globally there is no conflict.
  j = np.array([[1.0, 0.0, 5.0], [-1.0, 0.3, 5.0]])
  cols = [np.array([0, 1]), np.array([2])]
  inp = _inputs(j, cols=cols, names=("a", "b"))
  w_global, _, _ = _call(methods.make("pcgrad"), inp)
  w_group, _, _ = _call(methods.make("pcgrad", per_group=True), inp)
  np.testing.assert_allclose(w_global, 1.0)
  assert w_group.shape == (2, 2)
  np.testing.assert_allclose(w_group[1], 1.0)
  ja = j[:, cols[0]]
  np.testing.assert_allclose(ja.T @ w_group[0], _pcgrad_ref(ja, [[1], [0]]),
                             atol=1e-6)
  assert not np.allclose(w_group[0], 1.0)


# --- MGDA -----------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mgda_two_task_closed_form(seed):
  rng = np.random.default_rng(seed)
  j = rng.normal(size=(2, 5))
  if seed == 3:  # g1 inside the ball: the minimum is the vertex g1
    j[0] = 0.1 * j[1]
  g1, g2 = j
  alpha1 = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0, 1)
  w, _, extra = _call(methods.make("mgda"), _inputs(j))
  np.testing.assert_allclose(w / 2, [alpha1, 1 - alpha1], atol=2e-5)
  assert extra["min_norm"] == pytest.approx(
      np.linalg.norm(alpha1 * g1 + (1 - alpha1) * g2), rel=1e-4)


@pytest.mark.parametrize("normalize", ["none", "l2", "loss", "loss+"])
def test_mgda_matches_scipy_on_normalised_vectors(normalize):
  rng = np.random.default_rng(5)
  t = 3
  j = rng.normal(size=(t, 6)) * rng.uniform(0.2, 3.0, size=(t, 1))
  loss = rng.uniform(0.5, 3.0, size=t)
  norm = np.linalg.norm(j, axis=1)
  n = {"none": np.ones(t), "l2": norm, "loss": loss,
       "loss+": loss * norm}[normalize]
  u = j / n[:, None]
  alpha, _ = _simplex_min(lambda a: (a @ u) @ (a @ u), t, rng)
  w, _, extra = _call(methods.make("mgda", normalize=normalize),
                      _inputs(j, losses=loss))
  d_ref = t * alpha @ u
  np.testing.assert_allclose(j.T @ w, d_ref, atol=1e-4 * np.abs(d_ref).max())
  assert extra["min_norm"] == pytest.approx(np.linalg.norm(d_ref) / t, rel=1e-3)


def test_mgda_ub_solves_with_feature_gram():
  rng = np.random.default_rng(6)
  j, f = rng.normal(size=(3, 7)), rng.normal(size=(3, 4))
  w_ub, _, extra = _call(methods.make("mgda", ub=True),
                         _inputs(j, feature_TxF=f))
  w_f, _, _ = _call(methods.make("mgda"), _inputs(f))
  np.testing.assert_allclose(w_ub, w_f, atol=1e-5)
  assert extra["min_norm"] == pytest.approx(np.linalg.norm(j.T @ w_ub) / 3,
                                            rel=1e-4)
  with pytest.raises(ValueError, match="feature_gram"):
    _call(methods.make("mgda", ub=True),
          dataclasses.replace(_inputs(j), feature_gram_TxT=None))


# --- CAGrad ---------------------------------------------------------------


def _cagrad_ref(j, c, rng):
  """The official code's direction, with scipy on its objective."""
  t = len(j)
  gg = j @ j.T
  k = c * np.sqrt(gg.mean() + 1e-8) + 1e-8
  fn = lambda x: x @ gg @ (np.ones(t) / t) + k * np.sqrt(x @ gg @ x + 1e-8)
  x, fun = _simplex_min(fn, t, rng)
  gw = x @ j
  return j.mean(0) + k / (np.linalg.norm(gw) + 1e-8) * gw, fun


@pytest.mark.parametrize("t, seed", [(3, 0), (3, 1), (3, 2), (4, 3)])
def test_cagrad_matches_scipy(t, seed):
  rng = np.random.default_rng(seed)
  j = rng.normal(size=(t, 6)) * rng.uniform(0.3, 3.0, size=(t, 1))
  d_ref, fun = _cagrad_ref(j, 0.4, rng)
  w, _, extra = _call(methods.make("cagrad"), _inputs(j))
  np.testing.assert_allclose(j.T @ w, t * d_ref / 1.16,
                             atol=1e-4 * np.abs(d_ref).max())
  assert extra["objective"] == pytest.approx(fun, rel=1e-4)


def test_cagrad_rescale_options_and_c_zero():
  j = np.random.default_rng(4).normal(size=(3, 5))
  inp = _inputs(j)
  w = {r: _call(methods.make("cagrad", rescale=r), inp)[0] for r in (0, 1, 2)}
  np.testing.assert_allclose(w[1] * 1.16, w[0], rtol=1e-5)
  np.testing.assert_allclose(w[2] * 1.4, w[0], rtol=1e-5)
  np.testing.assert_allclose(_call(methods.make("cagrad", c=0.0), inp)[0], 1.0,
                             rtol=1e-5)


# --- GradVac --------------------------------------------------------------


def _gradvac_ref(j, target, order, beta):
  target = target.copy()
  d = np.zeros(j.shape[1])
  for i in range(len(j)):
    g = j[i].copy()
    for k in order[i]:
      if k == i:
        continue
      gk = j[k]
      phi = g @ gk / (np.linalg.norm(g) * np.linalg.norm(gk))
      tgt = target[i, k]
      if phi < tgt:
        g = g + np.linalg.norm(g) * (
            tgt * np.sqrt(1 - phi ** 2) - phi * np.sqrt(1 - tgt ** 2)) / (
                np.linalg.norm(gk) * np.sqrt(1 - tgt ** 2)) * gk
      target[i, k] = (1 - beta) * tgt + beta * phi
    d += g
  return d, target


def test_gradvac_global_matches_reference_over_two_calls():
  rng = np.random.default_rng(7)
  j1 = rng.normal(size=(3, 6))
  j2 = j1 + 0.1 * rng.normal(size=(3, 6))
  m = methods.make("gradvac", per_group=False)
  # Targets start at 0: the first call is PCGrad with the same orders.
  w1, state, _ = _call(m, _inputs(j1, seed=1))
  np.testing.assert_allclose(w1, _call(methods.make("pcgrad"),
                                       _inputs(j1, seed=1))[0], rtol=1e-5)
  d_ref, target = _gradvac_ref(j1, np.zeros((3, 3)), _orders(1, 3), 0.01)
  np.testing.assert_allclose(j1.T @ w1, d_ref, atol=1e-5)
  np.testing.assert_allclose(state["target_GxTxT"][0], target, atol=1e-7)
  assert np.abs(target).max() > 1e-3
  # Then from targets far from 0, so that the lift differs from PCGrad's.
  target = rng.uniform(-0.3, 0.6, size=(3, 3))
  w2, state, extra = _call(m, _inputs(j2, seed=2),
                           {"target_GxTxT": _f32(target[None])})
  d_ref, target = _gradvac_ref(j2, target.astype(np.float32), _orders(2, 3),
                               0.01)
  np.testing.assert_allclose(j2.T @ w2, d_ref, atol=1e-4)
  np.testing.assert_allclose(state["target_GxTxT"][0], target, atol=1e-5)
  assert extra["adjust_frac"] > 0
  assert not np.allclose(w2, _call(methods.make("pcgrad"),
                                   _inputs(j2, seed=2))[0], atol=1e-2)


def test_gradvac_per_group_matches_reference():
  rng = np.random.default_rng(8)
  j = rng.normal(size=(3, 8))
  cols = [np.arange(5), np.arange(5, 8)]
  m = methods.make("gradvac")
  target0 = rng.uniform(-0.3, 0.6, size=(2, 3, 3)).astype(np.float32)
  w, state, _ = _call(m, _inputs(j, cols=cols, names=("a", "b"), seed=3),
                      {"target_GxTxT": jnp.asarray(target0)})
  orders = _orders(3, 3, groups=2)
  assert not np.array_equal(orders[0], orders[1])
  for g, c in enumerate(cols):
    order = orders[g]
    d_ref, target = _gradvac_ref(j[:, c], target0[g].astype(np.float64),
                                 order, 0.01)
    np.testing.assert_allclose(j[:, c].T @ w[g], d_ref, atol=1e-4)
    np.testing.assert_allclose(state["target_GxTxT"][g], target, atol=1e-5)


# --- IMTL-G ---------------------------------------------------------------


@pytest.mark.parametrize("t", [3, 4])
def test_imtl_g_equal_projections_and_closed_form(t):
  rng = np.random.default_rng(t)
  j = rng.normal(size=(t, 8)) * rng.uniform(0.3, 3.0, size=(t, 1))
  w, _, _ = _call(methods.make("imtl_g"), _inputs(j))
  d = j.T @ w
  u = j / np.linalg.norm(j, axis=1, keepdims=True)
  proj = u @ d
  np.testing.assert_allclose(proj, proj.mean(), rtol=1e-4)
  assert w.sum() == pytest.approx(t, rel=1e-5)
  dd, uu = j[0] - j[1:], u[0] - u[1:]  # the paper's D and U
  rest = j[0] @ uu.T @ np.linalg.inv(dd @ uu.T)
  alpha = np.concatenate([[1 - rest.sum()], rest])
  np.testing.assert_allclose(w / t, alpha, rtol=1e-3, atol=1e-5)


# --- Nash-MTL -------------------------------------------------------------


@pytest.mark.parametrize("t, seed", [(2, 0), (2, 1), (3, 2), (3, 3), (3, 4)])
def test_nash_mtl_solves_fixed_point(t, seed):
  j = np.random.default_rng(seed).normal(size=(t, 5))
  g = j @ j.T
  g = g / np.linalg.norm(g)
  alpha, state, extra = _call(methods.make("nash_mtl"), _inputs(j))
  np.testing.assert_allclose(alpha * (g @ alpha), 1.0, atol=1e-4)
  root = optimize.root(lambda a: g @ a - 1 / a, np.ones(t), tol=1e-12).x
  np.testing.assert_allclose(alpha, root, rtol=1e-4)
  np.testing.assert_allclose(state["alpha_T"], alpha)
  assert extra["residual"] < 1e-4


def test_nash_mtl_warm_starts_from_state():
  j = np.random.default_rng(9).normal(size=(3, 5))
  m = methods.make("nash_mtl", num_iters=1)
  inp, state = _inputs(j), m.init(3, 1)
  residuals = []
  for _ in range(25):
    prev = np.asarray(state["alpha_T"])
    _, state, extra = _call(m, inp, state)
    residuals.append(extra["residual"])
  assert not np.allclose(prev, 1.0)
  assert residuals[-1] < 1e-4 < residuals[0]
  assert residuals[-1] < residuals[5] < residuals[0]


# --- Aligned-MTL ----------------------------------------------------------


def _aligned_ref(j, scale):
  u, s, vt = np.linalg.svd(j, full_matrices=False)
  keep = s > s.max() * 1e-5
  u, s, vt = u[:, keep], s[keep], vt[keep]
  sig = {"min": s.min(), "median": np.sqrt(np.sort(s ** 2)[(len(s) - 1) // 2]),
         "rmse": np.sqrt(np.mean(s ** 2))}[scale]
  aligned = sig * u @ vt  # singular values all sig
  return aligned.T @ np.ones(len(j))


@pytest.mark.parametrize("scale", ["min", "median", "rmse"])
@pytest.mark.parametrize("rank_deficient", [False, True])
def test_aligned_mtl_matches_svd(scale, rank_deficient):
  rng = np.random.default_rng(10)
  j = rng.normal(size=(3, 7)) * rng.uniform(0.5, 3.0, size=(3, 1))
  if rank_deficient:
    j[2] = j[0] - 2 * j[1]
  w, _, _ = _call(methods.make("aligned_mtl", scale=scale), _inputs(j))
  d_ref = _aligned_ref(j, scale)
  np.testing.assert_allclose(j.T @ w, d_ref, atol=2e-3 * np.abs(d_ref).max())


# --- UPGrad ---------------------------------------------------------------


def test_upgrad_reference_example():
  j = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
  w, _, _ = _call(methods.make("upgrad"), _inputs(j))
  np.testing.assert_allclose(w, [1.1109, 0.7894], atol=1e-3)
  np.testing.assert_allclose(j.T @ w, [0.2929, 1.9004, 1.9004], atol=1e-3)


@pytest.mark.parametrize("t, seed", [(3, 0), (3, 1), (4, 2)])
def test_upgrad_matches_qp_and_does_not_conflict(t, seed):
  rng = np.random.default_rng(seed)
  j = _conflicting(rng, t, 8) * rng.uniform(0.3, 3.0, size=(t, 1))
  g = j @ j.T
  chol = np.linalg.cholesky(g / np.trace(g) + 1e-4 * np.eye(t))
  w_ref = sum(optimize.lsq_linear(chol.T, np.zeros(t), bounds=(
      np.eye(t)[i] / t, np.inf), method="bvls", tol=1e-12).x for i in range(t))
  w, _, _ = _call(methods.make("upgrad"), _inputs(j))
  np.testing.assert_allclose(w, w_ref, rtol=1e-3, atol=1e-5)
  if t == 3:  # without the ridge no task's first-order change is negative
    w0, _, _ = _call(methods.make("upgrad", reg_eps=0.0), _inputs(j))
    assert np.all(g @ w0 >= -1e-6 * np.trace(g))
    assert np.any(g @ np.ones(t) < 0)  # where the plain mean conflicts


# --- FAMO -----------------------------------------------------------------


def test_famo_matches_reference_over_three_calls():
  m = methods.make("famo")
  losses = [np.array([2.0, 0.5, 1.0]), np.array([1.5, 0.45, 0.6]),
            np.array([1.2, 0.44, 0.5])]
  xi, mom, vel = np.zeros(3), np.zeros(3), np.zeros(3)
  state, prev = m.init(3, 1), None
  for k, loss in enumerate(losses):
    if prev is not None:  # the reference's update_w, then Adam with L2 decay
      delta = np.log(prev + 1e-8) - np.log(loss + 1e-8)
      z = np.exp(xi) / np.exp(xi).sum()
      grad = (np.diag(z) - np.outer(z, z)) @ delta
      xi, mom, vel = _adam(xi, grad + 1e-3 * xi, mom, vel, k, 0.025)
    z = np.exp(xi) / np.exp(xi).sum()
    w_ref = (z / (loss + 1e-8)) / (z / (loss + 1e-8)).sum()
    w, state, _ = _call(m, _inputs(np.eye(3), losses=loss), state)
    np.testing.assert_allclose(w, w_ref, rtol=1e-5)
    np.testing.assert_allclose(state["xi_T"], xi, atol=1e-6)
    prev = loss
  assert np.abs(xi).max() > 0.01  # the state moved
