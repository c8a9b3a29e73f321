"""Gram matrices of per-task gradients and the statistics derived from them.

Dimensions:
  T: tasks    K: gradient rows (T, or 2T when every task is split in halves)
  G: parameter groups

Every statistic is a function of per-group Gram matrices G^l_ij = <g_i^l, g_j^l>
(the global Gram is their sum), so one leafwise pass over the gradients gives
all of them; dot products of sharded leaves become local partial sums plus a
scalar all-reduce under jit.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

TINY = 1e-30
THRESHOLDS = (0.0, -0.02, -0.05, -0.1)


def group_grams(grads_K: Sequence, leaf_groups: Sequence[int],
                num_groups: int) -> jax.Array:
  """G x K x K Gram matrices of K gradient pytrees (pairwise leafwise dots;
  no stacked copy of the gradients is made)."""
  k = len(grads_K)
  leaves_K = [jax.tree.leaves(g) for g in grads_K]
  dots = {}
  for a in range(k):
    for b in range(a, k):
      per_group = [jnp.float32(0)] * num_groups
      for x, y, g in zip(leaves_K[a], leaves_K[b], leaf_groups, strict=True):
        per_group[g] = per_group[g] + jnp.sum(
            x.astype(jnp.float32) * y.astype(jnp.float32))
      dots[a, b] = dots[b, a] = jnp.stack(per_group)
  return jnp.stack([jnp.stack([dots[a, b] for b in range(k)], -1)
                    for a in range(k)], -2)


def combine_halves(grams_GxKxK: jax.Array, frac_a_T: jax.Array) -> jax.Array:
  """Task Grams from half-batch Grams: g_i = f_i g_ia + (1 - f_i) g_ib, where
  rows 2i, 2i+1 hold task i's halves and f_i is half a's share of its tokens."""
  t = frac_a_T.shape[0]
  eye = jnp.eye(t, dtype=jnp.float32)
  c_TxK = jnp.stack([eye * frac_a_T[:, None], eye * (1 - frac_a_T)[:, None]],
                    -1).reshape(t, 2 * t)
  return jnp.einsum("ik,gkl,jl->gij", c_TxK, grams_GxKxK, c_TxK)


def _pairs(tasks: Sequence[str]):
  return [(i, j, f"{tasks[i]}:{tasks[j]}") for i in range(len(tasks))
          for j in range(i + 1, len(tasks))]


def _cos(gram, i, j):
  return gram[..., i, j] * jax.lax.rsqrt(
      jnp.maximum(gram[..., i, i] * gram[..., j, j], TINY))


def pair_stats(gram_TxT: jax.Array, tasks: Sequence[str], prefix: str,
               thresholds: Sequence[float] = THRESHOLDS,
               total_TxT: jax.Array | None = None) -> dict[str, jax.Array]:
  """Cosine, norms, norm ratio, magnitude similarity and conflict indicators of
  one Gram; with `total_TxT` (the global Gram) also this group's contribution
  to the global cosine, G^l_ij / sqrt(G_ii G_jj), which sums to it over groups."""
  out = {}
  norms_T = jnp.sqrt(jnp.maximum(jnp.diagonal(gram_TxT), 0.0))
  for i, name in enumerate(tasks):
    out[f"{prefix}norm/{name}"] = norms_T[i]
  for i, j, pair in _pairs(tasks):
    cos = _cos(gram_TxT, i, j)
    out[f"{prefix}cos/{pair}"] = cos
    a, b = norms_T[i], norms_T[j]
    out[f"{prefix}norm_ratio/{pair}"] = a / jnp.maximum(b, TINY)
    out[f"{prefix}magsim/{pair}"] = 2 * a * b / jnp.maximum(a * a + b * b, TINY)
    for s in thresholds:
      out[f"{prefix}conflict@{s:g}/{pair}"] = (cos < s).astype(jnp.float32)
    if total_TxT is not None:
      out[f"{prefix}contrib/{pair}"] = gram_TxT[i, j] * jax.lax.rsqrt(
          jnp.maximum(total_TxT[i, i] * total_TxT[j, j], TINY))
  return out


def statistics(grams_GxTxT: jax.Array, groups: Sequence[str],
               tasks: Sequence[str], thresholds: Sequence[float] = THRESHOLDS
               ) -> dict[str, jax.Array]:
  """Global statistics under "interf/", per-group ones under "group/<name>/"."""
  total = grams_GxTxT.sum(0)
  out = pair_stats(total, tasks, "interf/", thresholds)
  eig_T = jnp.linalg.eigvalsh(total)
  out["interf/kappa"] = jnp.sqrt(eig_T[-1] / jnp.maximum(eig_T[0], TINY * 1e10)
                                 ) if len(tasks) > 1 else jnp.float32(1)
  for g, name in enumerate(groups):
    out.update(pair_stats(grams_GxTxT[g], tasks, f"group/{name}/", thresholds,
                          total_TxT=total))
  return out


def null_statistics(halves_KxK: jax.Array, gram_TxT: jax.Array,
                    tasks: Sequence[str]) -> dict[str, jax.Array]:
  """Noise floor from independent halves of each task's sub-batch.

  <g_ia, g_ib> is unbiased for |E g_i|^2 (the noise cancels) while |g_i|^2 is
  inflated by the noise; <g_i, g_j> of different tasks is unbiased for
  <E g_i, E g_j>. Logged: the same-task split-half cosine (the cosine two
  samples of one objective reach; conflict means falling below it), the
  unbiased pieces (to average over a window before dividing), and the per-step
  debiased cosine <g_i, g_j> / sqrt(<g_ia, g_ib> <g_ja, g_jb>), clipped to
  [-1, 1] and 0 where a half-batch dot product is not positive.
  """
  out = {}
  signal_T = jnp.stack([halves_KxK[2 * i, 2 * i + 1] for i in range(len(tasks))])
  for i, name in enumerate(tasks):
    out[f"interf/null_cos/{name}"] = _cos(halves_KxK, 2 * i, 2 * i + 1)
    out[f"interf/null_dot/{name}"] = signal_T[i]
  for i, j, pair in _pairs(tasks):
    out[f"interf/dot/{pair}"] = gram_TxT[i, j]
    both = signal_T[i] * signal_T[j]
    rho = gram_TxT[i, j] * jax.lax.rsqrt(jnp.maximum(both, TINY))
    out[f"interf/debiased_cos/{pair}"] = jnp.where(
        (signal_T[i] > 0) & (signal_T[j] > 0), jnp.clip(rho, -1, 1), 0.0)
  return out


def alignment(grads_T: Sequence, update, gram_TxT: jax.Array,
              tasks: Sequence[str]) -> dict[str, jax.Array]:
  """Cosine between each task's gradient and the descent direction actually
  taken (minus the post-optimizer update): > 0 means the step lowers that
  task's loss to first order."""
  u_leaves = [x.astype(jnp.float32) for x in jax.tree.leaves(update)]
  u2 = sum(jnp.sum(x * x) for x in u_leaves)
  out = {}
  for i, name in enumerate(tasks):
    dot = sum(jnp.sum(g.astype(jnp.float32) * u) for g, u in
              zip(jax.tree.leaves(grads_T[i]), u_leaves, strict=True))
    out[f"interf/align/{name}"] = -dot * jax.lax.rsqrt(
        jnp.maximum(u2 * gram_TxT[i, i], TINY))
  return out
