"""Per-task losses, each a mean over that task's own target tokens.

Never a token mean over the mixed batch: that would weight tasks by answer
length (a caption has ~30 target tokens, a VQA answer 2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from r3jax.data import tasks as tasks_lib


def token_sums(logits_BxLxV: jax.Array, targets_BxL: jax.Array,
               mask_BxL: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Masked sums of cross-entropy and of correct next tokens, and the token count."""
  xent_BxL = optax.softmax_cross_entropy_with_integer_labels(
      logits_BxLxV.astype(jnp.float32), targets_BxL)
  correct_BxL = (logits_BxLxV.argmax(-1) == targets_BxL).astype(jnp.float32)
  return ((xent_BxL * mask_BxL).sum(), (correct_BxL * mask_BxL).sum(),
          mask_BxL.sum().astype(jnp.float32))


def sub_batch_sums(logits_BxLxV: jax.Array, b: Mapping[str, jax.Array],
                   task: str) -> tuple[jax.Array, jax.Array, jax.Array]:
  """token_sums of a task sub-batch, plus the task's own loss term
  (r3jax.data.tasks.Task.loss: the R3 consistency loss, the grounded loss)."""
  loss, correct, n = token_sums(logits_BxLxV, b["targets"], b["loss_mask"])
  term = tasks_lib.get(task).loss
  if term is not None:
    extra, agree, count = term(logits_BxLxV, b)
    loss, correct, n = loss + extra, correct + agree, n + count
  return loss, correct, n


def token_xent(logits_BxLxV: jax.Array, b: Mapping[str, jax.Array],
               task: str) -> tuple[jax.Array, jax.Array]:
  """A sub-batch's loss (mean over its target tokens) and token accuracy."""
  loss, correct, n = sub_batch_sums(logits_BxLxV, b, task)
  n = jnp.maximum(n, 1.0)
  return loss / n, correct / n


def task_losses(model, batch: Mapping[str, Mapping[str, jax.Array]]
                ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """{task: loss} and {task: token accuracy}; one forward per task sub-batch."""
  losses, accs = {}, {}
  for name, b in batch.items():
    logits = model(b["image"], b["tokens"])
    losses[name], accs[name] = token_xent(logits, b, name)
  return losses, accs


def weighted_total(losses: Mapping[str, jax.Array],
                   weights: Mapping[str, float]) -> jax.Array:
  return sum(weights[name] * loss for name, loss in losses.items())


# --- the shared layout: every task reads the same images --------------------

# Top-level parameter subtrees that Model.encode uses: the shared trunk.
TRUNK_KEYS = ("encoder", "img_proj")


def _trunk_split(params):
  trunk = {k: v for k, v in params.items() if k in TRUNK_KEYS}
  head = {k: v for k, v in params.items() if k not in TRUNK_KEYS}
  return trunk, head


def shared_forward(model_fn, params, batch):
  """Trunk features, the trunk VJP and one (loss, acc) closure per task."""
  tasks = tuple(batch)
  trunk, head = _trunk_split(params)
  images = batch[tasks[0]]["image"]
  feats, trunk_vjp = jax.vjp(
      lambda t: model_fn({**head, **t}).encode(images), trunk)

  def head_loss(b, task):
    def loss(h, f):
      logits = model_fn({**h, **trunk}).decode(f, b["tokens"])
      return token_xent(logits, b, task)
    return loss

  return tasks, head, feats, trunk_vjp, [head_loss(batch[t], t)
                                         for t in tasks]


def shared_joint(model_fn: Callable, params, batch,
                 weights: Mapping[str, float]):
  """The plain step's gradient for the shared layout: one trunk forward and
  one backward of the weighted sum. Returns (total, losses, accs, grads)."""
  tasks, head, feats, trunk_vjp, loss_fns = shared_forward(model_fn, params,
                                                           batch)

  def total(h, f):
    las = [fn(h, f) for fn in loss_fns]
    tot = sum(weights[t] * la[0] for t, la in zip(tasks, las))
    return tot, las

  (tot, las), (g_head, g_feats) = jax.value_and_grad(
      total, argnums=(0, 1), has_aux=True)(head, feats)
  (g_trunk,) = trunk_vjp(g_feats)
  losses = {t: la[0] for t, la in zip(tasks, las)}
  accs = {t: la[1] for t, la in zip(tasks, las)}
  return tot, losses, accs, {**g_head, **g_trunk}
