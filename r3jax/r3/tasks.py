"""The R3 tasks, registered with r3jax.data.tasks: reflect, refine,
refine_direct (the no-reflect ablation's refine) and ground, each with its
sequence formatter and its loss term beside the tokens' cross-entropy (the
consistency loss, r3jax.r3.consistency; the grounded loss,
r3jax.r3.grounded)."""

from __future__ import annotations

import functools

import jax.numpy as jnp

from r3jax.data import tasks as tasks_lib
from r3jax.r3 import consistency, grounded
from r3jax.r3 import data as r3_data
from r3jax.r3 import real as r3_real


def _formatter(name, tokenizer, max_len, context):
  """The world's R3 sequences (verifier targets), or on real captions (no
  world in the context) those of r3jax.r3.real (nearest-reference targets)."""
  if context.get("world") is None:
    return r3_real.formatter(name, tokenizer, max_len, context["r3"],
                             context["pool"], context.get("drafts"))
  return r3_data.formatter(name, tokenizer, max_len, context["world"],
                           context["r3"], context.get("drafts"))


def consistency_term(logits_BxLxV, b):
  """The consistency loss of a sub-batch that carries its fields (the
  refine stage's, weighted by config.r3.consistency), normalised like the
  tokens."""
  zero = jnp.zeros((), jnp.float32)
  if "cons_src" not in b:
    return zero, zero, zero
  return consistency.loss_sum(logits_BxLxV, b), zero, zero


def grounded_term(logits_BxLxV, b):
  """The grounded loss: its slots count as tokens, a slot agreeing with the
  VQA answer as a correct one."""
  return grounded.sums(logits_BxLxV, b)


for _name in ("reflect", "refine", "refine_direct"):
  tasks_lib.register(tasks_lib.Task(
      _name, sample=None, eval_items=None,
      formatter=functools.partial(_formatter, _name), fields=("captions",),
      own_token=_name != "refine_direct", loss=consistency_term))

tasks_lib.register(tasks_lib.Task(
    "ground", sample=None, eval_items=None, formatter=grounded.formatter,
    fields=("captions",), grouped=True, own_token=False, loss=grounded_term))
