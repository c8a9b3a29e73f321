"""The consistency loss between the reflect and the refine stage.

In one refine sequence the reflection commits to facts before the refined
caption states them: the instruction's new item ("replace ... with two small
red circles": a count, a size, a colour, a shape) and, in the self-questioning
variant, its answers from the image ("how many small red circles are there ?
two"). The refined caption later states each in a caption word ("two small
red circles"). For every such pair q (r3jax.r3.data), with the answers a of
the slot's kind (counts, sizes, colours or shapes):

  p_q(a)  = the probability the reflect stage gives to the words stating a
            where it commits (restricted to the slot's answers, renormalised)
  r_q(a)  = the probability the refine stage gives, at the caption word, to
            the words that state answer a ("one": "a" / "an" / "one"),
            restricted and renormalised the same way
  C       = sum_q w_q KL(stop_gradient(p_q) || r_q)

C is 0 exactly when the refined caption commits to each answer with the
probabilities the reflect stage gave it, and grows as they disagree; it is
added to the refine task's summed token loss, so it is normalised by the same
target-token count. Gradients stop at the reflect side: the reflect stage's
answers come from the understanding pathway and act as the teacher, and the
term moves the refine stage towards them rather than bending the
understanding answers towards what the caption says. It adds no parameters.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

_NEG = -1e30


def _restricted(logp_BxQxV: jax.Array, ids: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
  """log of the summed probabilities of each answer's ids (-1: unused),
  renormalised over the answers; [B, Q, K]."""
  flat = ids.reshape(*ids.shape[:2], -1)  # B x Q x (K*J)
  lp = jnp.take_along_axis(logp_BxQxV, jnp.maximum(flat, 0), axis=-1)
  lp = jnp.where(flat >= 0, lp, _NEG).reshape(ids.shape)
  per_answer = jax.nn.logsumexp(lp, axis=-1) if ids.ndim == 4 else lp
  valid = ids.reshape(*ids.shape[:3], -1).max(-1) >= 0
  per_answer = jnp.where(valid, per_answer, _NEG)
  return per_answer - jax.nn.logsumexp(per_answer, axis=-1, keepdims=True), valid


def kl_terms(logits_BxLxV: jax.Array, b: Mapping[str, jax.Array]) -> jax.Array:
  """KL(stop_gradient(p_q) || r_q) per row and question, [B, Q]."""
  logp = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
  at = lambda pos: jnp.take_along_axis(logp, pos[..., None], axis=1)  # noqa: E731
  src, valid = _restricted(at(b["cons_src"]), b["cons_src_ids"])
  dst, _ = _restricted(at(b["cons_dst"]), b["cons_dst_ids"])
  src = jax.lax.stop_gradient(src)
  p = jnp.where(valid, jnp.exp(src), 0.0)
  return jnp.sum(jnp.where(valid, p * (src - dst), 0.0), axis=-1)


def loss_sum(logits_BxLxV: jax.Array, b: Mapping[str, jax.Array]) -> jax.Array:
  """sum_q w_q KL_q over the sub-batch."""
  return jnp.sum(b["cons_weight"] * kl_terms(logits_BxLxV, b))
