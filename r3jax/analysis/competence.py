"""Competence gates: can a model see the world its questions ask about?

A study's reading holds at the competence of its starting model, so every
start is measured the same way on the test split:
  - VQA accuracy per question type (each >= 0.95);
  - ITA positive and negative accuracy and their discrimination
    pos + neg - 1 (>= 0.80): 0 for a constant answer, 1 for a perfect one;
  - caption fact F1 (>= 0.90) and V_strict (reported, not gated).
A model is R3-testable (`r3_testable`) when understanding passes and its
captions are not yet right (V_strict <= 0.6): where R3 is studied.

  from r3jax.analysis import competence
  print(competence.table(competence.read("runs/joint")))
  python -m experiments.competence runs/joint [--evaluate --max-examples N]

A run's metrics come from its result.json (a study's run, an exported base)
or from the last `<split>/...` row of its metrics.jsonl; `evaluate` scores
its latest checkpoint (or exported params.npz) afresh.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

QTYPES = ("existence", "count", "color", "shape", "size", "relation")
VQA_GATE, ITA_GATE, CAPTION_GATE = 0.95, 0.80, 0.90
# Captions "not yet right" where R3 is tested: V_strict at most this.
R3_VSTRICT_MAX = 0.60
DISCRIMINATION = "ita/discrimination"


@dataclasses.dataclass(frozen=True)
class Row:
  key: str
  label: str
  value: float | None
  gate: float | None  # None: reported, not gated

  @property
  def passed(self) -> bool | None:
    if self.gate is None:
      return None
    return self.value is not None and self.value >= self.gate


def with_derived(metrics: Mapping[str, float]) -> dict[str, float]:
  """`metrics` plus ITA discrimination (pos + neg - 1) when both are there."""
  out = dict(metrics)
  if "ita/pos_accuracy" in out and "ita/neg_accuracy" in out:
    out[DISCRIMINATION] = out["ita/pos_accuracy"] + out["ita/neg_accuracy"] - 1
  return out


def qtypes(max_objects: int = 3) -> tuple[str, ...]:
  """The question types a world asks: relations need two objects."""
  return QTYPES if max_objects >= 2 else tuple(
      q for q in QTYPES if q != "relation")


def rows(metrics: Mapping[str, float], max_objects: int = 3) -> list[Row]:
  """The gate table's rows; a gated metric that is missing fails."""
  m = with_derived(metrics)
  get = m.get
  out = [Row(f"vqa/qtype/{q}/accuracy", f"VQA {q}",
             get(f"vqa/qtype/{q}/accuracy"), VQA_GATE)
         for q in qtypes(max_objects)]
  out += [Row("vqa/accuracy", "VQA overall", get("vqa/accuracy"), None),
          Row("ita/pos_accuracy", "ITA positive accuracy",
              get("ita/pos_accuracy"), None),
          Row("ita/neg_accuracy", "ITA negative accuracy",
              get("ita/neg_accuracy"), None),
          Row(DISCRIMINATION, "ITA discrimination (pos + neg - 1)",
              get(DISCRIMINATION), ITA_GATE),
          Row("caption/f1", "caption fact F1", get("caption/f1"),
              CAPTION_GATE),
          Row("caption/v_strict", "caption V_strict", get("caption/v_strict"),
              None)]
  return out


def passes(metrics: Mapping[str, float], max_objects: int = 3) -> bool:
  """Every gate passed (a missing gated metric fails)."""
  return all(r.passed for r in rows(metrics, max_objects) if r.gate is not None)


def failed(metrics: Mapping[str, float], max_objects: int = 3) -> list[str]:
  """Labels of the gates not passed."""
  return [r.label for r in rows(metrics, max_objects) if r.passed is False]


def r3_testable(metrics: Mapping[str, float], max_objects: int = 3) -> bool:
  """The regime R3 is tested in: understanding competent (every VQA type
  and ITA discrimination pass their gates) while captions are not (V_strict
  <= R3_VSTRICT_MAX), so that understanding has something to repair."""
  m = with_derived(metrics)
  understanding = [r for r in rows(m, max_objects)
                   if r.gate is not None and not r.key.startswith("caption/")]
  v_strict = m.get("caption/v_strict")
  return all(r.passed for r in understanding) and (
      v_strict is not None and v_strict <= R3_VSTRICT_MAX)


def table(metrics: Mapping[str, float], max_objects: int = 3,
          title: str | None = None) -> str:
  """The gate table as markdown: metric, value, gate, pass/fail, and a
  closing line saying whether the model is competent."""
  lines = [f"**{title}**", ""] if title else []
  lines += ["| metric | value | gate | |", "|---|---|---|---|"]
  for r in rows(metrics, max_objects):
    value = "-" if r.value is None else f"{r.value:.3f}"
    gate = "" if r.gate is None else f">= {r.gate:.2f}"
    verdict = {None: "", True: "pass", False: "FAIL"}[r.passed]
    lines.append(f"| {r.label} | {value} | {gate} | {verdict} |")
  bad = failed(metrics, max_objects)
  lines += ["", "competent: every gate passed" if not bad else
            f"not competent: {len(bad)} gate(s) failed ({', '.join(bad)})"]
  if r3_testable(metrics, max_objects):
    lines.append("R3-testable: understanding passes, captions do not "
                 f"(V_strict <= {R3_VSTRICT_MAX:.1f})")
  return "\n".join(lines)


def max_objects_of(workdir: str) -> int:
  """The run's world.max_objects (its config.json), 3 when it has none."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return 3
  with open(path) as f:
    return int(json.load(f).get("world", {}).get("max_objects", 3))


def read(workdir: str, split: str = "test") -> dict[str, float]:
  """A run's evaluation on `split`: result.json's metrics when it has one,
  else the last row of metrics.jsonl that holds `<split>/` keys."""
  path = os.path.join(workdir, "result.json")
  if os.path.exists(path):
    with open(path) as f:
      result = json.load(f)
    return dict(result.get("metrics", result))
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} has neither result.json nor "
                            "metrics.jsonl")
  prefix, found = f"{split}/", None
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      if any(k.startswith(prefix) for k in row):
        found = row
  if found is None:
    raise ValueError(f"{path} holds no {split!r} evaluation (evaluate the "
                     "run first: --evaluate)")
  return {k[len(prefix):]: v for k, v in found.items() if k.startswith(prefix)}


def curve(workdir: str, split: str = "validation",
          extra: Sequence[str] = ()) -> list[dict[str, Any]]:
  """Every `<split>/` evaluation in a run's metrics.jsonl, by step, with the
  gate metrics (and ITA discrimination) and the `extra` keys only."""
  keys = [r.key for r in rows({})] + list(extra)
  prefix, out = f"{split}/", []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      got = {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}
      if got:
        got = with_derived(got)
        out.append({"step": row["step"],
                    **{k: got[k] for k in keys if k in got}})
  return out


def eval_config(workdir: str, split: str = "test", max_examples: int = -1,
                data_dir: str | None = None):
  """The run's saved config, set up to score its parameters on the first
  `max_examples` images of `split` (-1: all) on this machine's devices."""
  from r3jax import config as config_lib  # noqa: PLC0415

  config = config_lib.load_saved(os.path.join(workdir, "config.json"))
  with config.unlocked():
    config.init_from, config.init_from_partial = "", False
    config.mesh = dict(data=-1, fsdp=1, tensor=1)
    if data_dir:
      config.data.dir = data_dir
    if max_examples > 0 and config.data.source == "world":
      # A split's scenes depend only on the data seed, the split and their
      # index: a small dataset holds the same first images, built in seconds.
      config.data.split_sizes = {s: 8 for s in ("train", "validation", "test")}
      config.data.split_sizes[split] = max_examples
  return config


def evaluate(workdir: str, split: str = "test", max_examples: int = -1,
             batch_size: int | None = None, devices=None,
             data_dir: str | None = None) -> dict[str, float]:
  """Scores `workdir`'s parameters (its latest checkpoint, or its exported
  params.npz) on the first `max_examples` images of `split` (-1: all), with
  the run's saved config."""
  import jax  # noqa: PLC0415 (jax-heavy imports only when evaluating)
  import ml_collections  # noqa: PLC0415

  from r3jax.train import checkpoint as ckpt_lib  # noqa: PLC0415
  from r3jax.run import loop  # noqa: PLC0415

  config = eval_config(workdir, split, max_examples, data_dir)
  mesh, world, setup, _ = loop.build(config, devices)
  params = ckpt_lib.load_params(workdir, setup.abstract["params"])
  eval_cfg = ml_collections.ConfigDict(config.final_eval.to_dict())
  eval_cfg.split = split
  eval_cfg.max_examples = max_examples
  if batch_size:
    eval_cfg.batch_size = batch_size
  with jax.set_mesh(mesh):
    return world.evaluator(setup, eval_cfg).run(params)
