"""The registry of studies: named lists of arms run over seeds.

An arm is one config file + argument string (`{seed}` is filled per seed) plus
dotted-key overrides. `after` names another arm of the same study whose run
(same seed) this arm starts from: the runner points `config.init_from` at
that arm's workdir (R3-RL included).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from r3jax import config as config_lib
from r3jax.interference import methods

# (result key, label) of the metrics every study reports.
METRICS = (
    ("caption/f1", "caption F1"),
    ("caption/v_strict", "caption V_strict"),
    ("caption/cider_d", "caption CIDEr-D"),
    ("vqa/accuracy", "VQA accuracy"),
    ("ita/accuracy", "ITA accuracy"),
    ("train_seconds", "train s"),
)


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  config: str  # "configs/joint.py:seed={seed},method=pcgrad"
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  after: str | None = None
  # Another arm of the study: train for the wall-clock time its steps take
  # with the plain weighted-sum step (experiments/wallclock.py).
  budget: str | None = None


@dataclasses.dataclass(frozen=True)
class Study:
  name: str
  doc: str
  arms: Sequence[Arm]
  reference: str  # the arm the others are compared with
  # The arm the others continue from (the dilemma's common checkpoint): the
  # report also gives each arm's change from it.
  start: str | None = None
  seeds: int = 3
  # Overrides for every arm under `--scale` (a reduced version of the study).
  scale: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  metrics: Sequence[tuple[str, str]] = METRICS

  def arm(self, name: str) -> Arm:
    for a in self.arms:
      if a.name == name:
        return a
    raise ValueError(f"study {self.name!r} has no arm {name!r}; arms: "
                     f"{[a.name for a in self.arms]}")

  def order(self, names: Sequence[str] | None = None) -> list[Arm]:
    """The named arms (default: all) and the arms they start from, each after
    the arm it starts from, otherwise in registry order."""
    want = set(names if names is not None else [a.name for a in self.arms])
    pending = [self.arm(n) for n in want]  # validates the names
    while pending:  # close over `after`
      a = pending.pop()
      if a.after and a.after not in want:
        want.add(a.after)
        pending.append(self.arm(a.after))
    out: list[Arm] = []
    done: set[str] = set()
    todo = [a for a in self.arms if a.name in want]
    while todo:
      ready = [a for a in todo if not a.after or a.after in done]
      if not ready:
        raise ValueError(f"study {self.name!r}: arms {[a.name for a in todo]} "
                         "start from each other in a cycle")
      out += ready
      done |= {a.name for a in ready}
      todo = [a for a in todo if a.name not in done]
    return out


STUDIES: dict[str, Study] = {}


def register(study: Study) -> Study:
  names = [a.name for a in study.arms]
  if len(set(names)) != len(names):
    raise ValueError(f"study {study.name!r} repeats an arm name: {names}")
  study.arm(study.reference)
  if study.start:
    study.arm(study.start)
  for a in study.arms:
    if a.after:
      study.arm(a.after)
    if a.budget:
      study.arm(a.budget)
  study.order()  # no cycles
  STUDIES[study.name] = study
  return study


def get(name: str) -> Study:
  if name not in STUDIES:
    raise ValueError(f"unknown study {name!r}; known: {sorted(STUDIES)}")
  return STUDIES[name]


# --- the studies -------------------------------------------------------------

# The continuation arms train as long as the shared joint base.
_DILEMMA_STEPS = 1500
# Every arm's decoder has the joint model's positions, so that the
# single-objective arms can start from the joint base.
_JOINT_LEN = {"model.max_len": max(
    config_lib.all_tasks()[t].max_len for t in ("caption", "vqa", "ita"))}

register(Study(
    name="dilemma",
    doc="Joint SFT, then equal-length continuations on generation only, "
        "understanding only, or both: what each objective costs the other.",
    arms=[
        Arm("base", "configs/joint.py:seed={seed},steps=%d" % _DILEMMA_STEPS,
            _JOINT_LEN),
        Arm("gen_only", "configs/caption_only.py:seed={seed},steps=%d"
            % _DILEMMA_STEPS, _JOINT_LEN, after="base"),
        Arm("und_only", "configs/understanding_only.py:seed={seed},steps=%d"
            % _DILEMMA_STEPS, _JOINT_LEN, after="base"),
        Arm("joint", "configs/joint.py:seed={seed},steps=%d" % _DILEMMA_STEPS,
            _JOINT_LEN, after="base"),
    ],
    reference="joint",
    start="base",
    scale={"total_steps": 300},
))

# Caption-task weights against 1 for VQA and ITA (README, gradient interference).
GEN_WEIGHTS = [round(w, 6) for w in methods.log_ratio_grid(5, 0.25, 4)]
MITIGATION_METHODS = ("rlw", "pcgrad", "cagrad", "mgda", "nash_mtl", "upgrad",
                      "famo")

register(Study(
    name="mitigation",
    doc="Joint training with the plain weighted sum over a log grid of caption "
        "weights, and with each gradient-aggregation method at equal steps; "
        "`<method>_eqtime` arms train for the wall-clock time the plain "
        "weighted-sum step takes for the same number of steps.",
    arms=[Arm(f"weighted_sum_w{w:g}", f"configs/joint.py:seed={{seed}},"
              f"gen_weight={w:g}") for w in GEN_WEIGHTS] +
         [Arm(m, f"configs/joint.py:seed={{seed}},method={m}")
          for m in MITIGATION_METHODS] +
         [Arm(f"{m}_eqtime", f"configs/joint.py:seed={{seed}},method={m}",
              budget="weighted_sum_w1") for m in MITIGATION_METHODS],
    reference="weighted_sum_w1",
    scale={"total_steps": 300},
))

_RL_CONFIGS = ("r3_rl", "r3_rl_chain", "r3_rl_perfect0", "r3_rl_perfect05",
               "r3_rl_frozen_reflection")

register(Study(
    name="r3",
    doc="R3-SFT and its ablations; R3-RL and its ablations, each from the "
        "R3-SFT run of the same seed (config.init_from).",
    arms=[Arm(n, f"configs/{n}.py:seed={{seed}}") for n in
          ("r3_sft", "r3_sft_no_reflect", "r3_sft_no_consistency")] +
         [Arm(n, f"configs/{n}.py:seed={{seed}}", after="r3_sft")
          for n in _RL_CONFIGS],
    reference="r3_sft",
    scale={"total_steps": 200},
    metrics=METRICS[:-1] + (("r3/round3/f1", "refined F1"),
                            ("r3/round3/v_strict", "refined V_strict"),
                            METRICS[-1]),
))

# `make demo`: the dilemma's arms and R3-SFT, short and with one seed. Every
# arm has R3-SFT's decoder positions, so that all of them start from the base.
_DEMO_STEPS = (400, 200)  # base, each continuation
_DEMO = {"model.max_len": config_lib.all_tasks()["refine"].max_len,
         "final_eval.max_examples": 500}

register(Study(
    name="demo",
    doc="The reduced study (`make demo`): a short joint base, then "
        "equal-length continuations on generation only, understanding only, "
        "both, and R3-SFT; one seed. Its figures are a smoke view of the "
        "dilemma study, not its results.",
    arms=[Arm("base", "configs/joint.py:seed={seed},steps=%d" % _DEMO_STEPS[0],
              _DEMO)] +
         [Arm(name, f"configs/{cfg}.py:seed={{seed}},steps={_DEMO_STEPS[1]}",
              _DEMO, after="base")
          for name, cfg in (("gen_only", "caption_only"),
                            ("und_only", "understanding_only"),
                            ("joint", "joint"), ("r3_sft", "r3_sft"))],
    reference="joint",
    start="base",
    seeds=1,
))

# A smoke study for tests and CPU checks: the second arm continues the first
# with learning rate 0, so its final parameters (and metrics) are the first's
# exactly when it starts from them.
register(Study(
    name="tiny",
    doc="Two runlocal joint arms, the second continuing the first at lr 0.",
    arms=[
        Arm("first", "configs/joint.py:runlocal,seed={seed}",
            {"total_steps": 2, "ckpt_every_steps": 2, "eval_every_steps": 2,
             "interference.enabled": False}),
        Arm("frozen", "configs/joint.py:runlocal,seed={seed}",
            {"total_steps": 2, "ckpt_every_steps": 2, "eval_every_steps": 2,
             "interference.enabled": False, "optim.lr": 0.0}, after="first"),
    ],
    reference="first",
    seeds=1,
    scale={"total_steps": 2},
))
