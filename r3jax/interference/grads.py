"""Per-task gradients at (near) the cost of one joint gradient.

split:  tasks have disjoint sub-batches, so the joint gradient is exactly the
        weighted sum of per-task gradients, each taken on its own sub-batch:
        the same FLOPs as the plain step plus one gradient buffer per task.
        With `halves`, each task's gradient is the token-weighted sum of the
        gradients of its two half sub-batches (vmapped), which also gives the
        split-half noise floor at no extra FLOPs.
shared: every task sees the same images. The trunk (image encoder) runs forward
        once; each task's head loss gives its cotangent at the shared
        features, and only the trunk's backward is batched over the T
        cotangents (vmap of one VJP), not a full backward per task.

`model_fn(params)` returns the model; batches are {task: {image, tokens,
targets, loss_mask}} with the task keys in sorted order.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from r3jax.train import losses as losses_lib

@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["losses", "accs", "grads", "halves", "frac_a", "feature_grads"],
    meta_fields=["tasks"])
@dataclasses.dataclass
class TaskGrads:
  """Per-task results, lists in task order."""
  tasks: tuple[str, ...]
  losses: list[jax.Array]
  accs: list[jax.Array]
  grads: list[Any]
  halves: list[Any] | None = None        # 2T half-batch gradients (split+halves)
  frac_a: jax.Array | None = None        # T: half a's share of each task's tokens
  feature_grads: list[jax.Array] | None = None  # T cotangents at shared features


def task_loss(model_fn, b, task: str):
  """params -> (mean token cross-entropy, token accuracy) on sub-batch b of
  `task`."""
  def loss(params):
    logits = model_fn(params)(b["image"], b["tokens"])
    return losses_lib.token_xent(logits, b, task)
  return loss


def split(model_fn: Callable, params, batch: Mapping[str, Mapping[str, Any]],
          halves: bool = False) -> TaskGrads:
  tasks = tuple(batch)
  out = TaskGrads(tasks, [], [], [], [] if halves else None)
  fracs = []
  for name in tasks:
    b = batch[name]
    if not halves:
      (loss, acc), g = jax.value_and_grad(task_loss(model_fn, b, name),
                                          has_aux=True)(params)
      out.losses.append(loss)
      out.accs.append(acc)
      out.grads.append(g)
      continue
    n_rows = b["tokens"].shape[0]
    if n_rows % 2:
      raise ValueError(f"the split-half noise floor needs an even batch; "
                       f"config.tasks.{name}.batch_size={n_rows}")
    # Even images form half a, odd images half b, each with its text rows
    # (k per image with the pipeline's per_image, else 1): each half stays
    # spread over every data-parallel shard.
    n_img = b["image"].shape[0]
    if n_img % 2:
      raise ValueError(f"the split-half noise floor needs an even number of "
                       f"images per batch; config.tasks.{name} has {n_img}")

    def pair(x):
      k = x.shape[0] // n_img
      x = x.reshape(n_img // 2, 2, k, *x.shape[1:]).swapaxes(1, 2)
      return x.reshape(n_img // 2 * k, 2, *x.shape[3:])
    pairs = jax.tree.map(pair, b)

    def sums(params, h, name=name):
      logits = model_fn(params)(h["image"], h["tokens"])
      loss, correct, n = losses_lib.sub_batch_sums(logits, h, name)
      return loss, (correct, n)

    (xent_2, (correct_2, n_2)), g_2 = jax.vmap(
        jax.value_and_grad(sums, has_aux=True), in_axes=(None, 1))(params, pairs)
    n_2 = jnp.maximum(n_2, 1.0)
    n = n_2.sum()
    out.losses.append(xent_2.sum() / n)
    out.accs.append(correct_2.sum() / n)
    out.grads.append(jax.tree.map(lambda x: x.sum(0) / n, g_2))
    out.halves.extend(jax.tree.map(lambda x, k=k: x[k] / n_2[k], g_2)
                      for k in range(2))
    fracs.append(n_2[0] / n)
  if halves:
    out.frac_a = jnp.stack(fracs)
  return out


def shared(model_fn: Callable, params, batch: Mapping[str, Mapping[str, Any]]
           ) -> TaskGrads:
  tasks, head, feats, trunk_vjp, loss_fns = losses_lib.shared_forward(
      model_fn, params, batch)
  out = TaskGrads(tasks, [], [], [], feature_grads=[])
  head_grads = []
  for loss in loss_fns:
    (l, acc), (g_head, g_feats) = jax.value_and_grad(
        loss, argnums=(0, 1), has_aux=True)(head, feats)
    out.losses.append(l)
    out.accs.append(acc)
    head_grads.append(g_head)
    out.feature_grads.append(g_feats)
  (g_trunk_T,) = jax.vmap(trunk_vjp)(jnp.stack(out.feature_grads))
  for i, g_head in enumerate(head_grads):
    out.grads.append({**g_head, **jax.tree.map(lambda x, i=i: x[i], g_trunk_T)})
  return out
