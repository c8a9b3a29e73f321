"""The embedded world as a run sees it: dataset, tokenizer, model, evaluators."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from r3jax import config as config_lib
from r3jax import world as world_lib
from r3jax.data import tasks as tasks_lib
from r3jax.data import world_tfds
from r3jax.eval import evaluator as evaluator_lib
from r3jax.eval import metrics as metrics_lib
from r3jax.model import Model
from r3jax.run import source
from r3jax.world.config import NUMBERS
from r3jax.world.vqa import (positions_right, relation_operands,
                             strip_positions, trace_right)


def world_config(config: ml_collections.ConfigDict) -> world_lib.WorldConfig:
  kw = config.world.to_dict()
  kw["grid"] = kw["grid"] or None
  kw["number_words"] = kw.get("number_words") or None  # absent before it
  return world_lib.WorldConfig(**kw)


def make_caption_scorer(cfg: world_lib.WorldConfig, positions: bool = False,
                        trace: bool = False):
  """The verifier's and the text metrics' scores of the captions. With
  `positions` or `trace` (config.data.caption_positions, caption_trace)
  they score the captions without their written grid indices, and log
  caption/positions/accuracy (the share of listed single objects followed
  by their right column and row) or caption/trace/accuracy (the share of
  relation phrases after their two objects' right indices)."""
  def score(task, preds, items, records) -> dict:
    refs = [r for _, _, r, _ in items]
    scenes = [world_lib.scene_from_arrays(records[i]["scene"], cfg)
              for i, *_ in items]
    out = {}
    for on, key, count in ((positions, "positions", positions_right),
                           (trace, "trace", trace_right)):
      if on:
        counts = [count(p, s, cfg) for p, s in zip(preds, scenes)]
        out[f"{key}/accuracy"] = (sum(r for r, _ in counts) /
                                  max(sum(n for _, n in counts), 1))
    if positions or trace:
      preds = [strip_positions(p, cfg) for p in preds]
    out.update(metrics_lib.caption_metrics(preds, refs))
    verdicts = [world_lib.verify(p, s, cfg) for p, s in zip(preds, scenes)]
    out.update(metrics_lib.mean_caption_scores(verdicts))
    return out
  return score


def make_vqa_scorer(cfg: world_lib.WorldConfig, relation_answers: str):
  """score_vqa; with relation_answers "trace" or "restate" the answer to a
  relation question (one with relation words) is its prediction's last
  word; vqa/trace/accuracy is the share of relation predictions whose
  trace (all but the last word) is right, trace/a and trace/b the shares
  whose first and second grid index are (at the places the right trace has
  them), and trace/consistent the share whose answer follows from the
  indices it wrote; the same per question type under qtype/<type>/trace/."""
  if relation_answers == "word":
    return evaluator_lib.score_vqa

  def score(task, preds, items, records) -> dict:
    answers, hits = [], collections.defaultdict(list)
    for p, (i, q, _, extra) in zip(preds, items):
      answers.append(vqa_answer(p, q, relation_answers))
      if tasks_lib.relation_span(q.split()) is None:  # not a relation
        continue
      words = p.split()
      want = tasks_lib.relation_trace(q, records[i], cfg,
                                      relation_answers).split()
      ia, ib = (k for k, w in enumerate(want) if w in NUMBERS)
      shaped = len(words) == len(want) + 1
      got = {"accuracy": words[:-1] == want,
             "a": shaped and words[ia] == want[ia],
             "b": shaped and words[ib] == want[ib],
             "consistent": shaped and (
                 words[-1] == _answer_of(q, [words[ia], words[ib]], cfg))}
      for k, v in got.items():
        hits[f"trace/{k}"].append(v)
        hits[f"qtype/{extra['qtype']}/trace/{k}"].append(v)
    out = evaluator_lib.score_vqa(task, answers, items, records)
    out.update({k: float(np.mean(v)) for k, v in hits.items()})
    if hits:
      out["trace/count"] = float(len(hits["trace/accuracy"]))
    return out
  return score


def vqa_answer(prediction: str, question: str, relation_answers: str) -> str:
  """The answer a VQA prediction gives: all of it, or with written
  relation indices (relation_answers "trace" or "restate") its last word
  for a relation question."""
  if relation_answers == "word" or tasks_lib.relation_span(
      question.split()) is None:
    return prediction
  words = prediction.split()
  return words[-1] if words else ""


def _answer_of(question: str, indices: list[str], cfg) -> str | None:
  """The answer two written grid indices give `question`, None when they
  are not two distinct indices."""
  numbers = NUMBERS[:cfg.grid]
  if len(indices) != 2 or not set(indices) <= set(numbers) or (
      indices[0] == indices[1]):
    return None
  a, b = (numbers.index(w) for w in indices)
  _, _, swap, _ = relation_operands(question, cfg)
  return "yes" if (a > b if swap else a < b) else "no"


@dataclasses.dataclass
class World:
  config: ml_collections.ConfigDict
  world: world_lib.WorldConfig
  builder: Any
  tokenizer: Any
  train_source: Any
  make_model: Callable[[nnx.Rngs], Model]

  def records(self, split: str, max_examples: int) -> list[Mapping[str, Any]]:
    source = world_tfds.data_source(self.builder, split)
    n = len(source) if max_examples < 0 else min(max_examples, len(source))
    return [source[i] for i in range(n)]

  def task_context(self) -> dict[str, Any]:
    """What task formatters need beyond a record (r3jax.data.tasks)."""
    return {"world": self.world, "r3": self.config.r3,
            "relation_questions": self.config.data.relation_questions,
            "relation_answers": self.config.data.relation_answers,
            "position_questions": self.config.data.position_questions,
            "caption_positions": self.config.data.caption_positions,
            "caption_trace": self.config.data.caption_trace}

  def evaluator(self, setup, eval_cfg) -> source.Evaluation:
    """Every configured task's evaluation; with an R3 task also the R3 loop
    (per-round scores under r3/...) on the same records."""
    scorers = {name: t.score for name, t in tasks_lib.TASKS.items()
               if t.score is not None}
    scorers.update(caption=make_caption_scorer(
                       self.world, self.config.data.caption_positions,
                       self.config.data.caption_trace),
                   vqa=make_vqa_scorer(self.world,
                                       self.config.data.relation_answers),
                   ita=evaluator_lib.score_ita)
    records = self.records(eval_cfg.split, eval_cfg.max_examples)
    tasks = config_lib.evaluated_tasks(self.config)
    return source.Evaluation(evaluator_lib.Evaluator(
        setup, records, self.tokenizer, tasks, eval_cfg.batch_size, scorers),
        source.r3_loop_for(self.config, setup, self.tokenizer, self.world,
                           eval_cfg.batch_size), records)


def load(config: ml_collections.ConfigDict) -> World:
  """Builds the dataset if missing (process 0 first, the others then reuse it).
  r3jax.run.loop.load_source picks this or COCO/VQAv2 (r3jax.run.real_setup)."""
  if config.data.source != "world":
    raise ValueError("world_setup.load builds the embedded world, but "
                     f"config.data.source={config.data.source!r}: use "
                     "r3jax.run.loop.load_source")
  wcfg = world_config(config)
  sizes = config.data.split_sizes.to_dict()

  def build():
    return world_tfds.build(wcfg, config.data.dir, sizes, config.data.seed)

  if jax.process_index() == 0:
    builder = build()
  multihost_utils.sync_global_devices("r3jax world dataset")
  if jax.process_index() != 0:
    builder = build()
  tokenizer = world_tfds.load_tokenizer(builder).with_tasks(
      [n for n in config_lib.evaluated_tasks(config)
       if tasks_lib.TASKS[n].own_token])
  mcfg = config_lib.model_config(config, tokenizer.vocab_size, wcfg.image_size)
  return World(config, wcfg, builder, tokenizer,
               world_tfds.data_source(builder, "train"),
               lambda rngs: Model(mcfg, rngs=rngs))
