"""Generation-based evaluation of every task on a split of the world.

Each task's items (one per caption image, one per VQA question, one per ITA
pair) are decoded greedily with the KV cache in fixed-size, padded batches; the
padding rows are dropped before scoring. Every process builds the same batches,
places only its addressable shards, and gathers the decoded tokens, so the
same code runs on one host or many.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from r3jax import sharding
from r3jax.data import tasks as tasks_lib
from r3jax.eval import metrics as metrics_lib
from r3jax.model import make_generate_fn

# (task, predictions, items, records) -> {metric: value}
Scorer = Callable[[str, list[str], list[tuple], Sequence[Mapping]], dict]



class Evaluator:
  """`run(params) -> {"task/metric": value}` over the first `max_examples`
  records of a split."""

  def __init__(self, setup, records: Sequence[Mapping[str, Any]] | Mapping[
      str, Sequence[Mapping[str, Any]]], tokenizer,
               tasks_cfg: Mapping[str, Any], batch_size: int, scorers:
               Mapping[str, Scorer]):
    """`records`: the split's records for every task, or a mapping from task
    name to that task's records (real data)."""
    dp = setup.mesh.shape["data"] * setup.mesh.shape["fsdp"]
    if batch_size % dp:
      raise ValueError(f"eval batch_size={batch_size} is not divisible by the "
                       f"data-parallel size data*fsdp={dp}")
    self._tok = tokenizer
    self._bs = batch_size
    self._shard = sharding.batch_sharding(setup.mesh)
    self._scorers = scorers
    self._tasks = {}
    for name, t in sorted(tasks_cfg.items()):
      if tasks_lib.TASKS[name].eval_items is None:
        continue  # evaluated by its own loop (R3: r3jax.r3.loop)
      task_records = records[name] if isinstance(records, Mapping) else records
      items = [(i, *item) for i, r in enumerate(task_records)
               for item in tasks_lib.TASKS[name].eval_items(r)]
      prompts = [tasks_lib.format_prompt(tokenizer, name, q, t.max_len)
                 for _, q, _, _ in items]
      lens = np.array([n for _, n in prompts], np.int32)
      fn = make_generate_fn(setup.graphdef, max_len=t.max_len,
                            eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                            prefill_len=int(lens.min()))
      self._tasks[name] = (items, np.stack([p for p, _ in prompts]), lens, fn,
                           task_records)

  def _put(self, x: np.ndarray) -> jax.Array:
    return sharding.put(x, self._shard)

  def items(self, task: str) -> list[tuple]:
    """`task`'s items, (record index, question, answer, extra) each, in the
    order `predictions` decodes them."""
    return self._tasks[task][0]

  def predictions(self, params, task: str) -> list[str]:
    """Greedy decodes of every item of `task`, in item order."""
    items, prompts, lens, fn, records = self._tasks[task]
    out = []
    for s in range(0, len(items), self._bs):
      idx = np.arange(s, s + self._bs) % len(items)  # wrap to pad the last batch
      images = np.stack([records[items[i][0]]["image"] for i in idx])
      gen = fn(params, self._put(images.astype(np.uint8)),
               self._put(prompts[idx]), self._put(lens[idx]))
      tokens = multihost_utils.process_allgather(gen.tokens, tiled=True)
      n = min(self._bs, len(items) - s)
      out += [self._tok.decode(tokens[j, lens[idx[j]]:].tolist())
              for j in range(n)]
    return out

  def run(self, params) -> dict[str, float]:
    result = {}
    for name, (items, *_rest, records) in self._tasks.items():
      preds = self.predictions(params, name)
      scores = self._scorers[name](name, preds, items, records)
      result.update({f"{name}/{k}": float(v) for k, v in scores.items()})
    return result


def score_vqa(task, preds, items, records) -> dict:
  r = metrics_lib.vqa_accuracy(preds, [a for _, _, a, _ in items],
                               [e["qtype"] for *_, e in items])
  return _flatten(r)


def score_ita(task, preds, items, records) -> dict:
  return _flatten(metrics_lib.ita_accuracy(preds, [l for _, _, l, _ in items]))


def _flatten(d: Mapping, prefix: str = "") -> dict[str, float]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}/"))
    elif isinstance(v, (int, float, np.floating, np.integer)):
      out[f"{prefix}{k}"] = float(v)
  return out
