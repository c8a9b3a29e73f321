"""What every run is built from, whatever its data: the data-source
protocol the world (r3jax.run.world_setup) and COCO/VQAv2
(r3jax.run.real_setup) both follow, the state a run starts from and the
evaluation with its R3 loop."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, Protocol

import jax
import ml_collections
from absl import logging
from flax import nnx

from r3jax import config as config_lib
from r3jax.eval import evaluator as evaluator_lib
from r3jax.model import Model
from r3jax.model import pretrained
from r3jax.r3 import loop as r3_loop
from r3jax.r3 import variants as r3_variants
from r3jax.train import checkpoint as ckpt_lib


class Source(Protocol):
  """A run's data: the embedded world (world_setup.World) or COCO Captions
  with VQAv2 (real_setup.RealWorld); r3jax.run.loop.load_source builds the
  configured one."""
  config: ml_collections.ConfigDict
  tokenizer: Any
  # the training records: one source for every task (the world), or
  # {task: source} (real data: captions and VQA come from two datasets)
  train_source: Any
  make_model: Callable[[nnx.Rngs], Model]

  def task_context(self) -> dict[str, Any]:
    """What the task formatters need beyond a record (r3jax.data.tasks)."""

  def evaluator(self, setup, eval_cfg) -> "Evaluation":
    """Every configured task's evaluation on eval_cfg's split."""


def initial_state(config: ml_collections.ConfigDict, setup, init_state):
  """The state a run without a checkpoint starts from: a fresh initialisation
  whose parameters are config.init_from's latest checkpoint's, or whose
  encoder is config.model.encoder_init's pretrained weights."""
  state = init_state()
  if config.init_from and config.init_from_partial:
    state["params"], kept = ckpt_lib.load_params_partial(config.init_from,
                                                         state["params"])
    logging.info("init_from %s: %d parameter arrays start fresh: %s",
                 config.init_from, len(kept), ", ".join(kept) or "none")
  elif config.init_from:
    state["params"] = ckpt_lib.load_params(config.init_from,
                                           setup.abstract["params"])
  elif config.model.encoder_init:
    mcfg = config_lib.model_config(config, 1, config.world.image_size)
    encoder = pretrained.load_encoder(config.model.encoder_init, mcfg)
    state["params"] = pretrained.with_encoder(state["params"], encoder,
                                              mcfg.scan_layers)
  return state


def r3_loop_for(config, setup, tokenizer, world, batch_size: int):
  """The R3 loop that evaluates a run with R3 tasks (None without them);
  `world` is None on real data (scores against reference captions)."""
  tasks = config_lib.evaluated_tasks(config)
  if not set(r3_variants.R3_TASKS) & set(tasks):
    return None
  variant = r3_variant(config)
  r3_len = max(tasks[t].max_len for t in (*variant.tasks, variant.refine_task)
               if t in tasks)
  return r3_loop.R3Loop(
      setup, tokenizer, world, rounds=config.r3.rounds,
      batch_size=batch_size, caption_len=tasks.caption.max_len,
      r3_len=r3_len, variant=variant, lookup=config.r3.lookup,
      given_edit=config.r3.given_edit)


def r3_variant(config) -> r3_variants.Variant:
  """The run's R3 variant (config.r3.variant, or the one its tasks imply)."""
  return r3_variants.get(config.r3.variant,
                         config_lib.evaluated_tasks(config))


def r3_direct(config) -> bool:
  """Whether the run's loop refines without a reflect stage (the no-reflect
  ablation)."""
  return not r3_variant(config).reflect


@dataclasses.dataclass
class Evaluation:
  tasks: evaluator_lib.Evaluator
  r3: Any
  records: Any

  def run(self, params, examples: str | None = None) -> dict[str, float]:
    """Scores of every task; with an R3 loop and `examples` (a path, the
    final eval's r3_examples.jsonl) process 0 also writes each example's
    rounds there, one JSON line each (R3Loop.examples)."""
    out = self.tasks.run(params)
    if self.r3 is not None:
      trajs, scores = self.r3.run(params, self.records)
      out.update(scores)
      if examples and jax.process_index() == 0:
        with open(examples, "w") as f:
          for row in self.r3.examples(trajs, self.records):
            f.write(json.dumps(row) + "\n")
    return out


