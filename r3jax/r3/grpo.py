"""The GRPO objective on sampled sequences, as in the R3 code's text loss.

For trained tokens t of a rollout with advantage A (r3jax.r3.rewards):
  rho_t   = exp(log pi(t) - log pi_old(t))
  pg_t    = -min(rho_t A, clip(rho_t, 1 - eps, 1 + eps) A)
  kl_t    = exp(d_t) - d_t - 1,  d_t = log pi_ref(t) - log pi(t)   (k3)
  loss    = sum_t (pg_t + beta kl_t) / (number of trained tokens in the batch)
The KL term is dropped for a step whose mean kl_t exceeds `kl_cap` (10), as in
the reference. pi_old is the policy that sampled the batch; with one update
per rollout batch it equals pi. Here log pi_old is the training forward's own
(gradient stopped), so rho = 1 exactly and the clip never acts; the
reference takes it from the rollout's sampling pass, so its rho differs from
1 by the numerical difference of its two paths only.

A step may hold several streams with their own normalisation (Tree-RL's
refined captions: `loss(parts, streams=...)`): each stream's token mean,
weighted, is added to the main stream's.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp


def token_logp(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
  logp = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, targets_BxL[..., None], axis=-1)[..., 0]


def sums(logp_BxL: jax.Array, ref_logp_BxL: jax.Array,
         b: Mapping[str, jax.Array], *, clip: float
         ) -> dict[str, jax.Array]:
  """Token sums of pg_t and kl_t, the clipped-token count and the token count
  of one rollout sub-batch (fields loss_mask [B, L], advantage [B], old_logp
  [B, L]); `loss` combines the sub-batches of a step."""
  mask = b["loss_mask"]
  adv = b["advantage"][:, None]
  ratio = jnp.exp(logp_BxL - b["old_logp"])
  pg = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip, 1 + clip) * adv)
  d = ref_logp_BxL - logp_BxL
  kl = jnp.exp(d) - d - 1.0
  return {"pg": (pg * mask).sum(), "kl": (kl * mask).sum(),
          "clipped": ((jnp.abs(ratio - 1) > clip) * mask).sum(),
          "tokens": mask.sum()}


def _stream(parts, kl_weight: float, kl_cap: float):
  total = {k: sum(p[k] for p in parts) for k in parts[0]}
  n = jnp.maximum(total["tokens"], 1.0)
  pg, kl = total["pg"] / n, total["kl"] / n
  use_kl = (kl <= kl_cap).astype(jnp.float32)
  return pg + use_kl * kl_weight * kl, {
      "pg": pg, "kl": kl, "clip_frac": total["clipped"] / n,
      "tokens": total["tokens"]}


def loss(parts: list[Mapping[str, jax.Array]], *, kl_weight: float,
         kl_cap: float = 10.0,
         streams: Mapping[str, tuple[float, list[Mapping[str, jax.Array]]]]
         | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(loss, measurements) from the `sums` of every sub-batch of the step;
  `streams`: name -> (weight, its sub-batches' sums), each normalised by its
  own token count (measurements `<name>/pg` ...)."""
  total, m = _stream(parts, kl_weight, kl_cap)
  for name, (weight, stream_parts) in (streams or {}).items():
    value, sm = _stream(stream_parts, kl_weight, kl_cap)
    total = total + weight * value
    m.update({f"{name}/{k}": v for k, v in sm.items()})
  return total, m
