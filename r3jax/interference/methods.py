"""Multi-task gradient aggregation methods as weights = f(Gram [, state]).

The caller forms the update direction d = sum_i w_i g_i (per parameter group
when a method's weights are G x T). Working on T x T Gram matrices instead of
P-dimensional gradients keeps every solver tiny, jittable and float32; the
methods that edit gradients (PCGrad, GradVac) track each edited gradient as a
combination g_i' = sum_k M_ik g_k and return w = 1^T M.

Dimensions:
  T: tasks    G: parameter groups    S: subsets of the tasks

Scale (what sum_i w_i is when all T gradients are identical):
  T:   weighted_sum with unit weights, rlw (in expectation), gradnorm, pcgrad,
       gradvac, and the methods defined on the simplex or as an average, which
       are multiplied by T so their step matches the plain sum of task
       gradients: mgda, cagrad, imtl_g, aligned_mtl (whose reference already
       returns B 1).
  1:   upgrad (torchjd's mean preference vector) and famo (the reference
       direction, the gradient of c sum_i z_i log L_i).
  other: uw (0.5 exp(-s_i), 0.5 each at the start) and nash_mtl (the solution
       of G alpha = 1/alpha for the Frobenius-normalised Gram).

Extra measurements are unprefixed float32 scalars; the caller namespaces them.

A method that needs more than the Grams sets `edits_gradients = True`: its
inputs then hold the per-task gradients (Inputs.grads_T, one pytree per
task, shaped and sharded like the parameters) and it returns the update
direction itself (a pytree like one gradient) in place of the weights.
`register` adds a method defined anywhere (docs/extending.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

TINY = 1e-30
MAX_ENUM_TASKS = 8  # 2^T faces or active sets are enumerated
_RIDGE = 1e-6       # on faces of a Gram scaled to unit mean diagonal


@dataclasses.dataclass(frozen=True)
class Inputs:
  """Everything a method may look at in one step (a pytree; names static)."""
  gram_TxT: jax.Array
  grams_GxTxT: jax.Array
  group_names: tuple[str, ...]
  losses_T: jax.Array
  base_weights_T: jax.Array
  key: jax.Array
  step: jax.Array
  feature_gram_TxT: jax.Array | None = None
  # The task gradients, for methods with edits_gradients (else None).
  grads_T: tuple[Any, ...] | None = None


jax.tree_util.register_dataclass(
    Inputs, data_fields=["gram_TxT", "grams_GxTxT", "losses_T",
                         "base_weights_T", "key", "step", "feature_gram_TxT",
                         "grads_T"],
    meta_fields=["group_names"])


class Method(Protocol):
  name: str
  per_group: bool
  # Optional (default False): reads Inputs.grads_T and returns a direction.
  edits_gradients: bool

  def init(self, num_tasks: int, num_groups: int) -> Any:
    ...

  def __call__(self, inp: Inputs, state: Any
               ) -> tuple[Any, Any, dict[str, jax.Array]]:
    """Returns (weights_T or weights_GxT, or with edits_gradients the update
    direction, new_state, extra measurements)."""


METHODS: dict[str, Callable[..., Method]] = {}


def register(cls):
  """Adds the method class `cls` (a frozen dataclass whose fields are its
  hyper-parameters, config.interference.method_args) under `cls.name`."""
  if not dataclasses.is_dataclass(cls) or not isinstance(
      getattr(cls, "name", None), str):
    raise TypeError(f"{cls!r} is not a method: a dataclass with a class "
                    "attribute `name` (see Method)")
  if cls.name in METHODS and METHODS[cls.name] is not cls:
    raise ValueError(f"aggregation method {cls.name!r} is already registered")
  METHODS[cls.name] = cls
  return cls


def unregister(name: str) -> None:
  METHODS.pop(name, None)


def edits_gradients(method: Method) -> bool:
  return bool(getattr(method, "edits_gradients", False))


_register = register


def make(name: str, **kwargs) -> Method:
  """The method registered as `name` with the given hyper-parameters."""
  if name not in METHODS:
    raise ValueError(f"unknown aggregation method {name!r}; known: "
                     f"{', '.join(sorted(METHODS))}")
  cls = METHODS[name]
  fields = sorted(f.name for f in dataclasses.fields(cls))
  unknown = sorted(set(kwargs) - set(fields))
  if unknown:
    raise TypeError(f"aggregation method {name!r} has no hyper-parameter "
                    f"{', '.join(map(repr, unknown))}; it takes: "
                    f"{', '.join(fields) or 'none'}")
  return cls(**kwargs)


def log_ratio_grid(num: int, lo: float, hi: float) -> list[float]:
  """`num` log-spaced ratios from lo to hi, plus 1.0 when lo < 1 < hi and it
  is not already one of them (then num + 1 values), ascending."""
  if num < 1 or not 0 < lo <= hi:
    raise ValueError(f"log_ratio_grid needs num >= 1 and 0 < lo <= hi, got "
                     f"num={num}, lo={lo}, hi={hi}")
  grid = [float(x) for x in np.geomspace(lo, hi, num)]
  grid = [1.0 if math.isclose(x, 1.0, rel_tol=1e-9) else x for x in grid]
  if lo < 1.0 < hi and 1.0 not in grid:
    grid = sorted(grid + [1.0])
  return grid


# --- small shared pieces ---------------------------------------------------


def _check(ok: bool, msg: str):
  if not ok:
    raise ValueError(msg)


def _check_choice(method: str, field: str, value, choices):
  _check(value in choices, f"{method}: {field} must be one of {choices}, got "
         f"{value!r}")


def _check_tasks(method: str, t: int):
  _check(t <= MAX_ENUM_TASKS, f"{method} enumerates 2^T subsets and supports "
         f"at most {MAX_ENUM_TASKS} tasks, got {t}")


def _f32(x) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def _num_tasks(inp: Inputs) -> int:
  return inp.gram_TxT.shape[-1]


def _opt(kind: str, lr: float) -> optax.GradientTransformation:
  return optax.adam(lr) if kind == "adam" else optax.sgd(lr)


def _unit_scale(gram_TxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Gram over its mean diagonal (the solvers are scale-free), and the scale."""
  scale = jnp.maximum(jnp.trace(gram_TxT) / gram_TxT.shape[-1], TINY)
  return gram_TxT / scale, scale


def _subsets(t: int, empty: bool = False) -> np.ndarray:
  """S x T 0/1 masks of the subsets of T tasks (the empty one only if asked)."""
  idx = np.arange(0 if empty else 1, 2 ** t)
  return ((idx[:, None] >> np.arange(t)) & 1).astype(np.float32)


def _pd_solve(k_NxN: jax.Array, rhs_NxR: jax.Array) -> jax.Array:
  """Solves positive definite (batched) systems by Cholesky (NaN otherwise)."""
  chol = jnp.linalg.cholesky(k_NxN)
  y = jax.lax.linalg.triangular_solve(chol, rhs_NxR, left_side=True,
                                      lower=True)
  return jax.lax.linalg.triangular_solve(chol, y, left_side=True, lower=True,
                                         transpose_a=True)


def _face_solve(g_TxT: jax.Array, masks_SxT: jax.Array,
                rhs_SxTxR: jax.Array) -> jax.Array:
  """x with G_FF x_F = r_F on every face F (x = 0 off F), tiny ridge."""
  eye = jnp.eye(g_TxT.shape[-1], dtype=jnp.float32)
  both = masks_SxT[:, :, None] * masks_SxT[:, None, :]
  k = both * (g_TxT + _RIDGE * eye) + (1 - masks_SxT)[:, :, None] * eye
  return _pd_solve(k, rhs_SxTxR * masks_SxT[:, :, None])


def _best_on_simplex(cands_CxT, masks_CxT, objective):
  """Clips every candidate into the simplex (uniform on its face when that
  fails) and keeps the best. The optimum's own face yields it exactly, and
  every other clipped candidate is feasible, so no KKT tolerance is needed."""
  a_CxT = jnp.maximum(cands_CxT, 0.0)
  tot = a_CxT.sum(-1, keepdims=True)
  ok = (tot > TINY) & jnp.all(jnp.isfinite(cands_CxT), -1, keepdims=True)
  uniform = masks_CxT / masks_CxT.sum(-1, keepdims=True)
  a_CxT = jnp.where(ok, a_CxT / jnp.where(ok, tot, 1.0), uniform)
  obj_C = objective(a_CxT)
  obj_C = jnp.where(jnp.isfinite(obj_C), obj_C, jnp.inf)
  return a_CxT[jnp.argmin(obj_C)]


def _quad(a_CxT, g_TxT):
  return jnp.einsum("ci,ij,cj->c", a_CxT, g_TxT, a_CxT)


def _min_norm_simplex(gram_TxT: jax.Array) -> jax.Array:
  """argmin over the simplex of a^T G a, by enumerating supports: on face S
  the minimiser of the affine hull is G_SS^-1 1 / (1^T G_SS^-1 1)."""
  t = gram_TxT.shape[-1]
  g, _ = _unit_scale(gram_TxT)
  masks = jnp.asarray(_subsets(t))
  y = _face_solve(g, masks, masks[:, :, None])[..., 0]
  return _best_on_simplex(y, masks, lambda a: _quad(a, g))


def _orders(key: jax.Array, t: int, groups: int | None = None) -> jax.Array:
  """[G x] T x T: row i is a random order of all tasks, drawn for each i (and
  group). Ranks of uniform draws (ties by index), a sort-free argsort."""
  u = jax.random.uniform(key, (t, t) if groups is None else (groups, t, t))
  idx = jnp.arange(t)
  before = ((u[..., None, :] < u[..., :, None])
            | ((u[..., None, :] == u[..., :, None]) & (idx < idx[:, None])))
  rank = before.sum(-1)  # rank[..., k]: position of task k
  return jnp.sum(idx[:, None] * (rank[..., :, None] == idx), -2)


def _project_coeffs(gram_TxT: jax.Array, order_TxT: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
  """PCGrad in weight space: M with g_i^PC = sum_k M_ik g_k, and the number
  of projections made. Rows are independent, so all i advance together."""
  t = gram_TxT.shape[-1]
  rows = jnp.arange(t)
  sq_T = jnp.diagonal(gram_TxT)

  def visit(p, carry):
    m, hits = carry
    j_T = order_TxT[:, p]
    dot_T = jnp.sum(m * gram_TxT[j_T], 1)  # <g_i^PC, g_j>
    hit = (dot_T < 0) & (j_T != rows) & (sq_T[j_T] > TINY)
    coef = jnp.where(hit, dot_T / jnp.maximum(sq_T[j_T], TINY), 0.0)
    return m.at[rows, j_T].add(-coef), hits + hit.sum()

  return jax.lax.fori_loop(0, t, visit, (jnp.eye(t, dtype=jnp.float32),
                                         jnp.float32(0)))


def _vaccine_coeffs(gram_TxT, target_TxT, order_TxT, beta: float):
  """GradVac in weight space: (M, updated targets, number of adjustments)."""
  t = gram_TxT.shape[-1]
  rows = jnp.arange(t)
  norm_T = jnp.sqrt(jnp.maximum(jnp.diagonal(gram_TxT), 0.0))

  def visit(p, carry):
    m, target, hits = carry
    j_T = order_TxT[:, p]
    dot_T = jnp.sum(m * gram_TxT[j_T], 1)
    ni_T = jnp.sqrt(jnp.maximum(jnp.sum((m @ gram_TxT) * m, 1), 0.0))
    nj_T = norm_T[j_T]
    valid = (j_T != rows) & (ni_T > 1e-15) & (nj_T > 1e-15)
    phi = jnp.clip(dot_T / jnp.maximum(ni_T * nj_T, TINY), -1.0, 1.0)
    tgt = target[rows, j_T]
    hit = valid & (phi < tgt)
    coef = ni_T * (tgt * jnp.sqrt(1 - phi ** 2) - phi * jnp.sqrt(1 - tgt ** 2)
                   ) / (jnp.maximum(nj_T, TINY)
                        * jnp.sqrt(jnp.maximum(1 - tgt ** 2, 1e-12)))
    m = m.at[rows, j_T].add(jnp.where(hit, coef, 0.0))
    # The paper's EMA: every visited pair, with the cosine before adjusting.
    target = target.at[rows, j_T].set(
        jnp.where(valid, (1 - beta) * tgt + beta * phi, tgt))
    return m, target, hits + hit.sum()

  return jax.lax.fori_loop(0, t, visit, (jnp.eye(t, dtype=jnp.float32),
                                         target_TxT, jnp.float32(0)))


# --- methods ---------------------------------------------------------------


class _Base:
  per_group = False
  enumerates: ClassVar[bool] = False  # solves over all 2^T task subsets

  def init(self, num_tasks: int, num_groups: int) -> Any:
    del num_groups
    if self.enumerates:
      _check_tasks(self.name, num_tasks)
    return {}


@_register
@dataclasses.dataclass(frozen=True)
class WeightedSum(_Base):
  """w = the config's task weights."""
  name: ClassVar[str] = "weighted_sum"

  def __call__(self, inp: Inputs, state):
    return _f32(inp.base_weights_T), state, {}


@_register
@dataclasses.dataclass(frozen=True)
class RLW(_Base):
  """Random Loss Weighting (Lin et al. 2022): w = T * softmax(z), z ~ N(0, I),
  or T times a flat Dirichlet draw (normalised exponentials); sum w = T."""
  name: ClassVar[str] = "rlw"
  dist: str = "normal"

  def __post_init__(self):
    _check_choice(self.name, "dist", self.dist, ("normal", "dirichlet"))

  def __call__(self, inp: Inputs, state):
    t = _num_tasks(inp)
    if self.dist == "normal":
      p_T = jax.nn.softmax(jax.random.normal(inp.key, (t,), jnp.float32))
    else:
      e_T = jax.random.exponential(inp.key, (t,), jnp.float32)
      p_T = e_T / e_T.sum()  # Dirichlet(1, ..., 1)
    return t * p_T, state, {}


@_register
@dataclasses.dataclass(frozen=True)
class UW(_Base):
  """Uncertainty weighting (Kendall et al. 2018).

  L = sum_i 0.5 exp(-s_i) L_i + 0.5 s_i with learned log-variances s, so
  w_i = 0.5 exp(-s_i). Returns the weights from s before this call's update;
  s then takes one step of its own optimizer ("adam", default, or "sgd") on
  dL/ds_i = -0.5 exp(-s_i) L_i + 0.5, whose zero is s_i = log L_i.
  """
  name: ClassVar[str] = "uw"
  lr: float = 1e-2
  optimizer: str = "adam"

  def __post_init__(self):
    _check(self.lr > 0, f"uw: lr must be positive, got {self.lr}")
    _check_choice(self.name, "optimizer", self.optimizer, ("adam", "sgd"))

  def init(self, num_tasks: int, num_groups: int):
    s_T = jnp.zeros((num_tasks,), jnp.float32)
    return {"log_var_T": s_T, "opt": _opt(self.optimizer, self.lr).init(s_T)}

  def __call__(self, inp: Inputs, state):
    s_T = state["log_var_T"]
    w_T = 0.5 * jnp.exp(-s_T)
    grad_T = -w_T * _f32(inp.losses_T) + 0.5
    upd, opt = _opt(self.optimizer, self.lr).update(grad_T, state["opt"], s_T)
    new = {"log_var_T": optax.apply_updates(s_T, upd), "opt": opt}
    return w_T, new, {}


@_register
@dataclasses.dataclass(frozen=True)
class GradNorm(_Base):
  """GradNorm (Chen et al. 2018) on the Gram of one parameter group W.

  `group` names W, the last shared layer; by default the last group whose
  name is not "head" (nor ends in "/head"). ||grad_W(w_i L_i)|| = w_i
  sqrt(G^W_ii); the target mean_j(w_j ||g_j^W||) r_i^alpha, with r the loss
  ratios L_i / L_i(0) over their mean and L(0) the first call's losses, is a
  constant. Returns the weights before this call's update; w then takes one
  optimizer step ("adam", default, or "sgd") on sum_i |w_i ||g_i^W|| -
  target_i|, is clamped positive and renormalised to sum T.
  """
  name: ClassVar[str] = "gradnorm"
  alpha: float = 1.5
  lr: float = 0.025
  group: str | None = None
  optimizer: str = "adam"

  def __post_init__(self):
    _check(self.lr > 0, f"gradnorm: lr must be positive, got {self.lr}")
    _check_choice(self.name, "optimizer", self.optimizer, ("adam", "sgd"))

  def group_index(self, names: tuple[str, ...]) -> int:
    if self.group is not None:
      _check(self.group in names, f"gradnorm: group {self.group!r} is not a "
             f"parameter group; groups: {', '.join(names)}")
      return names.index(self.group)
    body = [i for i, n in enumerate(names)
            if n != "head" and not n.endswith("/head")]
    _check(bool(body), f"gradnorm: every parameter group is a head ({names}); "
           "name the shared layer with group=...")
    return body[-1]

  def init(self, num_tasks: int, num_groups: int):
    w_T = jnp.ones((num_tasks,), jnp.float32)
    return {"w_T": w_T, "loss0_T": jnp.ones((num_tasks,), jnp.float32),
            "count": jnp.int32(0),
            "opt": _opt(self.optimizer, self.lr).init(w_T)}

  def __call__(self, inp: Inputs, state):
    t = _num_tasks(inp)
    gram = inp.grams_GxTxT[self.group_index(inp.group_names)]
    losses_T = _f32(inp.losses_T)
    loss0_T = jnp.where(state["count"] == 0, losses_T, state["loss0_T"])
    w_T = state["w_T"]
    gnorm_T = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    norm_T = w_T * gnorm_T
    ratio_T = losses_T / jnp.maximum(loss0_T, TINY)
    r_T = ratio_T / jnp.maximum(ratio_T.mean(), TINY)
    target_T = norm_T.mean() * r_T ** self.alpha
    grad_T = jnp.sign(norm_T - target_T) * gnorm_T
    upd, opt = _opt(self.optimizer, self.lr).update(grad_T, state["opt"], w_T)
    new_w = jnp.maximum(optax.apply_updates(w_T, upd), 1e-6)
    new = {"w_T": new_w * t / new_w.sum(), "loss0_T": loss0_T,
           "count": state["count"] + 1, "opt": opt}
    return w_T, new, {"loss": jnp.abs(norm_T - target_T).sum()}


@_register
@dataclasses.dataclass(frozen=True)
class PCGrad(_Base):
  """PCGrad (Yu et al. 2020): each g_i is projected off every g_j (j != i, in
  its own random order) it conflicts with; d = sum_i g_i^PC. per_group=True
  does the surgery separately in every group (the same orders), which is a
  different method from the global one."""
  name: ClassVar[str] = "pcgrad"
  per_group: bool = False

  def __call__(self, inp: Inputs, state):
    t = _num_tasks(inp)
    order = _orders(inp.key, t)
    if self.per_group:
      m, hits = jax.vmap(_project_coeffs, (0, None))(
          _f32(inp.grams_GxTxT), order)
      pairs = m.shape[0] * t * max(t - 1, 1)
      return m.sum(1), state, {"conflict_frac": hits.sum() / pairs}
    m, hits = _project_coeffs(_f32(inp.gram_TxT), order)
    return m.sum(0), state, {"conflict_frac": hits / (t * max(t - 1, 1))}


@_register
@dataclasses.dataclass(frozen=True)
class MGDA(_Base):
  """MGDA (Sener & Koltun 2018): alpha = argmin_simplex ||sum_i alpha_i g_i'||
  over g_i' = g_i / n_i with n from `normalize` as in LibMTL ("none": 1, "l2":
  ||g_i||, "loss": L_i, "loss+": L_i ||g_i||; a zero norm leaves g_i as is).
  Exact: every support is enumerated (T <= 8).

  Weights are w_i = T alpha_i / n_i, over the raw gradients (the reference
  code applies alpha to the raw losses instead). ub=True solves with the
  gradients at the shared features (MGDA-UB). Measures min_norm =
  ||sum_i (alpha_i / n_i) g_i|| over the shared parameters.
  """
  name: ClassVar[str] = "mgda"
  enumerates: ClassVar[bool] = True
  normalize: str = "none"
  ub: bool = False

  def __post_init__(self):
    _check_choice(self.name, "normalize", self.normalize,
                  ("none", "l2", "loss", "loss+"))

  def __call__(self, inp: Inputs, state):
    t = _num_tasks(inp)
    _check_tasks(self.name, t)
    gram = _f32(inp.gram_TxT)
    if self.ub:
      _check(inp.feature_gram_TxT is not None, "mgda: ub=True needs "
             "Inputs.feature_gram_TxT (gradients at the shared features)")
      solve = _f32(inp.feature_gram_TxT)
    else:
      solve = gram
    gnorm_T = jnp.sqrt(jnp.maximum(jnp.diagonal(solve), 0.0))
    n_T = {"none": jnp.ones_like(gnorm_T), "l2": gnorm_T,
           "loss": _f32(inp.losses_T),
           "loss+": _f32(inp.losses_T) * gnorm_T}[self.normalize]
    n_T = jnp.where(n_T > 1e-15, n_T, 1.0)
    alpha_T = _min_norm_simplex(solve / jnp.outer(n_T, n_T))
    raw_T = alpha_T / n_T
    min_norm = jnp.sqrt(jnp.maximum(raw_T @ gram @ raw_T, 0.0))
    return t * raw_T, state, {"min_norm": min_norm}


@_register
@dataclasses.dataclass(frozen=True)
class CAGrad(_Base):
  """CAGrad (Liu et al. 2021): with g0 the mean gradient and k = c ||g0||,
  w* = argmin_simplex <g_w, g0> + k ||g_w|| and d = g0 + k g_w* / ||g_w*||,
  divided by 1 + c^2 (rescale=1), 1 + c (2) or 1 (0) as in the official code.

  Exact: on each face the stationary point has a closed form (one quadratic
  in the multiplier of sum w = 1); every face's candidate, its min-norm point
  and its centre are scored (T <= 8). Weights are T times the official
  direction's, so c = 0 is the plain sum. Measures the objective.
  """
  name: ClassVar[str] = "cagrad"
  enumerates: ClassVar[bool] = True
  c: float = 0.4
  rescale: int = 1

  def __post_init__(self):
    _check(self.c >= 0, f"cagrad: c must be >= 0, got {self.c}")
    _check_choice(self.name, "rescale", self.rescale, (0, 1, 2))

  def __call__(self, inp: Inputs, state):
    t = _num_tasks(inp)
    _check_tasks(self.name, t)
    g, scale = _unit_scale(_f32(inp.gram_TxT))
    b_T = g.mean(1)  # <g_i, g0>
    k = self.c * jnp.sqrt(jnp.maximum(b_T.mean(), 0.0) + 1e-8)
    masks = jnp.asarray(_subsets(t))
    rhs = jnp.stack([jnp.broadcast_to(b_T, masks.shape), masks], -1)
    xy = _face_solve(g, masks, rhs)
    x, y = xy[..., 0], xy[..., 1]  # G_SS^-1 b, G_SS^-1 1
    a, bb, cc = y.sum(-1), x.sum(-1), (b_T * x).sum(-1)
    # Stationarity b + k G w / ||g_w|| + lam 1 = 0 on the face gives
    # w = -(x + lam y) / sqrt(disc), lam the smaller root of
    # a lam^2 + 2 bb lam + cc - k^2 = 0.
    disc = bb * bb - a * (cc - k * k)
    root = jnp.sqrt(jnp.maximum(disc, 0.0))
    a_safe = jnp.where(a > TINY, a, TINY)
    lam = (-bb - root) / a_safe
    stat = -(x + lam[:, None] * y) / jnp.maximum(root, TINY)[:, None]
    uniform = masks / masks.sum(-1, keepdims=True)
    stat = jnp.where((disc > 0)[:, None], stat, uniform)
    cands = jnp.concatenate([stat, y / a_safe[:, None], uniform])

    def objective(w_CxT):
      return w_CxT @ b_T + k * jnp.sqrt(jnp.maximum(_quad(w_CxT, g), 0) + 1e-8)

    w_T = _best_on_simplex(cands, jnp.tile(masks, (3, 1)), objective)
    gw_norm = jnp.sqrt(jnp.maximum(w_T @ g @ w_T, 0.0))
    d_T = 1.0 / t + k / (gw_norm + 1e-8) * w_T
    d_T = d_T / {0: 1.0, 1: 1 + self.c ** 2, 2: 1 + self.c}[self.rescale]
    return t * d_T, state, {"objective": scale * objective(w_T[None])[0]}


@_register
@dataclasses.dataclass(frozen=True)
class GradVac(_Base):
  """Gradient Vaccine (Wang et al. 2021), per group by default.

  For each i and j != i in random order, phi = cos(g_i', g_j); when phi is
  below the pair's EMA target phi_hat_ij, g_j is added to g_i' to lift the
  cosine to phi_hat. Every visited pair then updates phi_hat <- (1 - beta)
  phi_hat + beta phi with phi before the adjustment, as in the paper (LibMTL
  updates the target only on adjusted pairs). Targets start at 0, so the
  first call is PCGrad. per_group=False uses the global Gram (weights T).
  """
  name: ClassVar[str] = "gradvac"
  beta: float = 0.01
  per_group: bool = True

  def __post_init__(self):
    _check(0 <= self.beta <= 1, f"gradvac: beta must be in [0, 1], got "
           f"{self.beta}")

  def init(self, num_tasks: int, num_groups: int):
    g = num_groups if self.per_group else 1
    return {"target_GxTxT": jnp.zeros((g, num_tasks, num_tasks), jnp.float32)}

  def __call__(self, inp: Inputs, state):
    t = _num_tasks(inp)
    target = state["target_GxTxT"]
    fn = lambda gram, tgt, order: _vaccine_coeffs(gram, tgt, order, self.beta)
    if self.per_group:
      orders = _orders(inp.key, t, target.shape[0])
      m, target, hits = jax.vmap(fn)(_f32(inp.grams_GxTxT), target, orders)
      w = m.sum(1)
    else:
      m, tgt, hits = fn(_f32(inp.gram_TxT), target[0], _orders(inp.key, t))
      target, w = tgt[None], m.sum(0)
    pairs = target.shape[0] * t * max(t - 1, 1)
    return w, {"target_GxTxT": target}, {"adjust_frac": hits.sum() / pairs}


@_register
@dataclasses.dataclass(frozen=True)
class IMTLG(_Base):
  """IMTL-G (Liu et al. 2021): d = sum_i alpha_i g_i, sum alpha = 1, with
  equal projections (G alpha)_i / ||g_i|| on every unit gradient: alpha is
  pinv(G) sqrt(diag G) normalised, the pinv by eigh dropping eigenvalues
  below rcond * max. Weights T alpha (uniform if the sum vanishes)."""
  name: ClassVar[str] = "imtl_g"
  rcond: float = 1e-5

  def __call__(self, inp: Inputs, state):
    t = _num_tasks(inp)
    gram = _f32(inp.gram_TxT)
    lam_T, v_TxT = jnp.linalg.eigh(gram)
    keep = lam_T > self.rcond * jnp.maximum(lam_T[-1], TINY)
    inv_T = jnp.where(keep, 1.0 / jnp.where(keep, lam_T, 1.0), 0.0)
    s_T = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    a_T = v_TxT @ (inv_T * (v_TxT.T @ s_T))
    tot = a_T.sum()
    ok = jnp.abs(tot) > TINY
    alpha_T = jnp.where(ok, a_T / jnp.where(ok, tot, 1.0), 1.0 / t)
    return t * alpha_T, state, {}


@_register
@dataclasses.dataclass(frozen=True)
class NashMTL(_Base):
  """Nash-MTL (Navon et al. 2022): alpha > 0 with (G alpha)_i = 1 / alpha_i,
  G divided by its Frobenius norm as in the reference code (plus a 1e-6
  ridge, so degenerate Grams keep a bounded solution).

  The solution minimises the convex, self-concordant potential
  0.5 a^T G a - sum_i log a_i; `num_iters` damped Newton steps
  a <- a - H^-1 grad / (1 + lambda) (lambda the Newton decrement, which keeps
  a > 0 without a line search) start from the previous call's alpha. The
  reference's max_norm is left to the optimizer's gradient clipping.
  Measures the fixed-point residual max_i |alpha_i (G alpha)_i - 1|.
  """
  name: ClassVar[str] = "nash_mtl"
  num_iters: int = 20

  def __post_init__(self):
    _check(self.num_iters >= 0, f"nash_mtl: num_iters must be >= 0, got "
           f"{self.num_iters}")

  def init(self, num_tasks: int, num_groups: int):
    return {"alpha_T": jnp.ones((num_tasks,), jnp.float32)}

  def __call__(self, inp: Inputs, state):
    gram = _f32(inp.gram_TxT)
    t = gram.shape[-1]
    g = gram / jnp.maximum(jnp.linalg.norm(gram), TINY)
    g = g + 1e-6 * jnp.eye(t, dtype=jnp.float32)

    def newton(_, a_T):
      grad_T = g @ a_T - 1.0 / a_T
      step_T = _pd_solve(g + jnp.diag(a_T ** -2), grad_T[:, None])[:, 0]
      dec = jnp.sqrt(jnp.maximum(grad_T @ step_T, 0.0))
      a_T = a_T - step_T / (1.0 + dec)
      return jnp.clip(a_T, 1e-6, 1e6)

    alpha_T = jax.lax.fori_loop(0, self.num_iters, newton, state["alpha_T"])
    residual = jnp.max(jnp.abs(alpha_T * (g @ alpha_T) - 1.0))
    return alpha_T, {"alpha_T": alpha_T}, {"residual": residual}


@_register
@dataclasses.dataclass(frozen=True)
class AlignedMTL(_Base):
  """Aligned-MTL (Senushkin et al. 2023): with G = V diag(lam) V^T over the
  eigenvalues above max(lam) T eps (eps of float32, as the reference),
  B = sqrt(s) V diag(lam^-1/2) V^T and w = B 1, which makes the aligned
  Jacobian's singular values all sqrt(s). s: the smallest kept eigenvalue
  ("min"), their lower median ("median") or mean ("rmse"), as in torchjd.
  A zero Gram gives w = 1."""
  name: ClassVar[str] = "aligned_mtl"
  scale: str = "min"

  def __post_init__(self):
    _check_choice(self.name, "scale", self.scale, ("min", "median", "rmse"))

  def __call__(self, inp: Inputs, state):
    t = _num_tasks(inp)
    lam_T, v_TxT = jnp.linalg.eigh(_f32(inp.gram_TxT))  # ascending
    keep = lam_T > jnp.max(lam_T) * t * jnp.finfo(jnp.float32).eps
    rank = keep.sum()
    lam_safe = jnp.where(keep, lam_T, 1.0)
    if self.scale == "min":
      s = jnp.min(jnp.where(keep, lam_T, jnp.inf))
    elif self.scale == "median":  # kept ones are the top `rank`, ascending
      s = lam_T[t - rank + (rank - 1) // 2]
    else:
      s = jnp.sum(jnp.where(keep, lam_T, 0.0)) / jnp.maximum(rank, 1)
    b_TxT = (v_TxT * jnp.where(keep, jax.lax.rsqrt(lam_safe), 0.0)) @ v_TxT.T
    w_T = jnp.sqrt(jnp.where(rank > 0, s, 1.0)) * b_TxT.sum(1)
    return jnp.where(rank > 0, w_T, 1.0), state, {}


@_register
@dataclasses.dataclass(frozen=True)
class UPGrad(_Base):
  """UPGrad (Quinton & Rey 2024) as torchjd: w = sum_i v^(i) with
  v^(i) = argmin_{v >= e_i / T} v^T G v (= (1/T) sum_i argmin_{v >= e_i}),
  G divided by its trace (zero when
  the trace is below norm_eps, an absolute threshold as in torchjd) plus
  reg_eps I. Exact: for every set of free coordinates the others sit at their
  bound and the free ones solve G_FF v_F = -G_FA v_A; all 2^T candidates are
  clipped to the bounds and the best kept (T <= 8)."""
  name: ClassVar[str] = "upgrad"
  enumerates: ClassVar[bool] = True
  norm_eps: float = 1e-4
  reg_eps: float = 1e-4

  def __post_init__(self):
    _check(self.norm_eps >= 0 and self.reg_eps >= 0, "upgrad: norm_eps and "
           f"reg_eps must be >= 0, got {self.norm_eps}, {self.reg_eps}")

  def __call__(self, inp: Inputs, state):
    t = _num_tasks(inp)
    _check_tasks(self.name, t)
    gram = _f32(inp.gram_TxT)
    tr = jnp.trace(gram)
    eye = jnp.eye(t, dtype=jnp.float32)
    g = jnp.where(tr < self.norm_eps, 0.0, gram / jnp.maximum(tr, TINY))
    g = g + self.reg_eps * eye
    free_SxT = jnp.asarray(_subsets(t, empty=True))
    fixed_SxT = 1 - free_SxT
    lower_TxI = eye / t  # column i: the bound of problem i
    k = (free_SxT[:, :, None] * free_SxT[:, None, :] * g
         + fixed_SxT[:, :, None] * eye)
    at_bound_SxTxI = fixed_SxT[:, :, None] * lower_TxI
    rhs = at_bound_SxTxI - free_SxT[:, :, None] * (g @ at_bound_SxTxI)
    v_SxTxI = jnp.maximum(_pd_solve(k, rhs), lower_TxI)
    v_SxTxI = jnp.where(jnp.isfinite(v_SxTxI), v_SxTxI, lower_TxI)
    obj_SxI = jnp.einsum("sti,tu,sui->si", v_SxTxI, g, v_SxTxI)
    best_I = jnp.argmin(obj_SxI, 0)
    v_IxT = v_SxTxI[best_I, :, jnp.arange(t)]
    return v_IxT.sum(0), state, {}


@_register
@dataclasses.dataclass(frozen=True)
class FAMO(_Base):
  """FAMO (Liu et al. 2023): z = softmax(xi), D_i = L_i - min_loss + 1e-8,
  w_i = (z_i / D_i) / sum_j z_j / D_j: the gradient of c sum_i z_i log D_i,
  summing to 1 as in the reference.

  xi takes an Adam step (lr w_lr, L2 weight decay gamma as torch's Adam) on
  J_softmax(xi)^T (log D_prev - log D_now) before the weights are formed.
  D_prev is the previous call's: the loss change spans a batch change too,
  where the reference trainer re-runs a forward on the same batch after the
  step. The first call does not update.
  """
  name: ClassVar[str] = "famo"
  w_lr: float = 0.025
  gamma: float = 1e-3
  min_loss: float = 0.0

  def __post_init__(self):
    _check(self.w_lr > 0, f"famo: w_lr must be positive, got {self.w_lr}")

  def _opt(self):
    return optax.chain(optax.add_decayed_weights(self.gamma),
                       optax.adam(self.w_lr))

  def init(self, num_tasks: int, num_groups: int):
    xi_T = jnp.zeros((num_tasks,), jnp.float32)
    return {"xi_T": xi_T, "opt": self._opt().init(xi_T),
            "log_d_T": jnp.zeros((num_tasks,), jnp.float32),
            "count": jnp.int32(0)}

  def __call__(self, inp: Inputs, state):
    d_T = jnp.maximum(_f32(inp.losses_T) - self.min_loss, 0.0) + 1e-8
    log_d_T = jnp.log(d_T)
    xi_T = state["xi_T"]
    z_T = jax.nn.softmax(xi_T)
    delta_T = state["log_d_T"] - log_d_T
    grad_T = z_T * (delta_T - z_T @ delta_T)  # J_softmax^T delta
    upd, opt = self._opt().update(grad_T, state["opt"], xi_T)
    first = state["count"] == 0
    xi_T = jnp.where(first, xi_T, optax.apply_updates(xi_T, upd))
    opt = jax.tree.map(lambda old, new: jnp.where(first, old, new),
                       state["opt"], opt)
    u_T = jax.nn.softmax(xi_T) / d_T
    new = {"xi_T": xi_T, "opt": opt, "log_d_T": log_d_T,
           "count": state["count"] + 1}
    return u_T / u_T.sum(), new, {}
