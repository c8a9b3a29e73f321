"""The registry of studies: named lists of arms run over seeds.

An arm is one config file + argument string (`{seed}` is filled per seed) plus
dotted-key overrides (a `tasks.X.*` override reaches the arms that train X,
as a command-line `--config.KEY=VALUE` does). `after` names another arm of
the same study whose run (same seed) this arm starts from: the runner points
`config.init_from` at that arm's workdir (R3-RL included).
"""

from __future__ import annotations

import dataclasses
import os
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

# The R3 studies' metrics: the loop's refined captions beside the drafts'.
R3_METRICS = METRICS[:-1] + (("r3/round3/f1", "refined F1"),
                             ("r3/round3/v_strict", "refined V_strict"),
                             METRICS[-1])


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
  # An exported start outside the study (a directory of the repository,
  # e.g. experiments/competence/r3_start): every arm takes its world, model
  # and formats (config argument base=DIR), those that do not continue
  # another arm its parameters too; the report prints its gate table.
  base: str | None = None
  seeds: int = 3
  # Overrides for every arm under `--scale` (a reduced version of the study).
  scale: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  metrics: Sequence[tuple[str, str]] = METRICS
  # An R3-RL arm at learning rate 0, or one per RL mode (tree, chain): the
  # report pairs every RL arm's reward with the baseline that logs the same
  # stages, seed by seed.
  rl_baseline: str | tuple[str, ...] | None = None
  # Arms with the R3 loop -> arms without it: the report pairs each loop's
  # captions after its last round with its own drafts and with those arms'
  # captions, seed by seed (its "The loop against its drafts" family).
  loops: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)

  @property
  def rl_baselines(self) -> tuple[str, ...]:
    b = self.rl_baseline
    return () if not b else (b,) if isinstance(b, str) else tuple(b)

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
# The repository root: commands run there, and Study.base is relative to it.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def register(study: Study) -> Study:
  names = [a.name for a in study.arms]
  if len(set(names)) != len(names):
    raise ValueError(f"study {study.name!r} repeats an arm name: {names}")
  study.arm(study.reference)
  if study.start:
    study.arm(study.start)
  for b in study.rl_baselines:
    study.arm(b)
  for a, against in study.loops.items():
    for x in (a, *against):
      study.arm(x)
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

# The setting of the studies (docs/studies.md, The setting): a capacity-limited model, half
# the default width with half the default batches, on the default world. There
# the objectives trade off (experiments/dilemma/RESULTS.md); the default-width
# model co-trains without a loss on either side in short runs.
SMALL = {"model.enc_overrides": {"width": 64, "depth": 2, "heads": 4,
                                 "mlp": 256},
         "model.dec_width": 64, "model.dec_mlp": 256,
         "tasks.caption.batch_size": 16, "tasks.vqa.batch_size": 16,
         "tasks.ita.batch_size": 8, "tasks.reflect.batch_size": 8,
         "tasks.refine.batch_size": 8, "tasks.refine_direct.batch_size": 8}
# The easy world: one object per image (no relations; a caption's counts are
# all one).
EASY_WORLD = {"world.min_objects": 1, "world.max_objects": 1}
_DILEMMA_STEPS = 1000  # the base, and each continuation


# (arm, config file) continued from the joint base.
_DILEMMA_ARMS = (("gen_only", "caption_only"), ("und_only", "understanding_only"),
                 ("joint", "joint"))


def _run(name: str, spec: str, steps: int, overrides: Mapping[str, Any],
         **kw) -> Arm:
  """`spec` = "<config file in configs/>[,<its arguments>]"."""
  file, _, args = spec.partition(",")
  return Arm(name, f"configs/{file}.py:seed={{seed}},steps={steps}"
             + (f",{args}" if args else ""), overrides, **kw)


def _continuations(steps: tuple[int, int], overrides: Mapping[str, Any],
                   arms: Sequence[tuple] = _DILEMMA_ARMS) -> list[Arm]:
  """A joint base, then from it equal-length runs of each (arm, spec[, the
  arm's own overrides[, Arm keywords]])."""
  return [_run("base", "joint", steps[0], overrides)] + [
      _run(name, spec, steps[1], {**overrides, **(own[0] if own else {})},
           after="base", **(own[1] if len(own) > 1 else {}))
      for name, spec, *own in arms]


def _dilemma(name: str, doc: str, overrides: Mapping[str, Any]) -> Study:
  return Study(name=name, doc=doc,
               arms=_continuations((_DILEMMA_STEPS,) * 2, overrides),
               reference="joint", start="base", scale={"total_steps": 300})


_DILEMMA_DOC = ("Joint SFT, then equal-length continuations on generation "
                "only, understanding only, or both: what each objective costs "
                "the other.")
register(_dilemma("dilemma", _DILEMMA_DOC + " The capacity-limited setting.",
                  SMALL))
register(_dilemma("dilemma_easy", _DILEMMA_DOC + " The same model on the easy "
                  "world (one object per image).", {**SMALL, **EASY_WORLD}))

# Caption-task weights against 1 for VQA and ITA (docs/interference.md).
GEN_WEIGHTS = [round(w, 6) for w in methods.log_ratio_grid(5, 0.25, 4)]
MITIGATION_METHODS = ("rlw", "pcgrad", "cagrad", "mgda", "nash_mtl", "upgrad",
                      "famo")

register(Study(
    name="mitigation",
    doc="From a joint base made by the dilemma study's base command (its "
        "own run): co-training "
        "for equal steps with the plain weighted sum over a log grid of "
        "caption weights, and with each gradient-aggregation method; "
        "`<method>_eqtime` arms train for the wall-clock time the plain "
        "weighted-sum step takes for those steps. `weighted_sum_w1` has the "
        "dilemma study's `joint` config.",
    arms=_continuations((_DILEMMA_STEPS,) * 2, SMALL, [
        *((f"weighted_sum_w{w:g}", f"joint,gen_weight={w:g}")
          for w in GEN_WEIGHTS),
        *((m, f"joint,method={m}") for m in MITIGATION_METHODS),
        *((f"{m}_eqtime", f"joint,method={m}", {},
           {"budget": "weighted_sum_w1"}) for m in MITIGATION_METHODS)]),
    reference="weighted_sum_w1",
    start="base",
    scale={"total_steps": 300},
))

_RL_CONFIGS = ("r3_rl", "r3_rl_chain", "r3_rl_perfect0", "r3_rl_perfect05",
               "r3_rl_frozen_reflection")

# Every R3 arm has R3-SFT's decoder positions, so that all of them start from
# the same joint base.
_R3 = {**SMALL, "model.max_len": config_lib.all_tasks()["refine"].max_len}

register(Study(
    name="r3",
    doc="From one joint base (the capacity-limited setting): joint training, "
        "R3-SFT and its ablations for equal steps; R3-RL and its ablations, "
        "each from the R3-SFT run of the same seed (config.init_from).",
    arms=_continuations((_DILEMMA_STEPS,) * 2, _R3, [("joint", "joint")] + [
        (n, n) for n in ("r3_sft", "r3_sft_no_reflect",
                         "r3_sft_no_consistency")]) +
         [Arm(n, f"configs/{n}.py:seed={{seed}}", _R3, after="r3_sft")
          for n in _RL_CONFIGS],
    reference="r3_sft",
    start="base",
    scale={"total_steps": 200},
    metrics=R3_METRICS,
))

# R3 where it can be tested: from a start whose understanding passes its
# gates while its captions do not (experiments/competence, the R3-testable
# start), every arm continues with the start's VQA / ITA mix at a rate for
# fine-tuning, not the from-scratch default, and the plain step (no
# interference statistics). Equal compute is equal steps of equal caption,
# VQA and ITA batches: the R3 arms add their own tasks' examples on top
# (their train seconds are in the report).
# The start: experiments/competence/r3_loop (the r3_warm_long run of the
# competence search: understanding at its gates, captions not yet right,
# the reflect and refine stages trained).
R3_LOOP = "experiments/competence/r3_loop"
_FROM_START = {"optim.lr": 2.5e-4, "optim.warmup_steps": 100,
               "interference.enabled": False,
               "tasks.caption.batch_size": 16, "tasks.vqa.batch_size": 64,
               "tasks.vqa.per_image": 4, "tasks.ita.batch_size": 32,
               "tasks.ita.per_image": 4,
               "tasks.vqa.type_weights": {"relation": 4}}
_R3_STEPS = 1000
# R3-RL with the root stage's gradient alone.
_ROOT_ONLY = {"rl.train_reflection": False, "rl.refine_weight": 0.0,
              "rl.supervised_weight": 0.0, "rl.interference": False}

register(Study(
    name="r3_testable",
    doc="From the R3-testable start (understanding competent, captions "
        "not): joint training, R3-SFT and its ablations (no reflect, no "
        "reflect/refine consistency, the grounded consistency loss) for "
        "equal steps; joint training for the time R3-SFT's training steps "
        "take (joint_eqtime); R3-RL tree and chain, and tree with half its "
        "branch drafts drawn right (perfect_ratio 0.5, against 0.15), from "
        "the R3-SFT run of the same seed; R3-RL tree and chain at rate 0 as "
        "their reward baselines; tree with the root stage's gradient "
        "alone (r3_rl_rootonly), and so for 1,000 steps with its own rate-0 "
        "run; tree at rates 2e-4 and 5e-4 (the RL rate sweep).",
    arms=[_run(n, n, _R3_STEPS, _FROM_START) for n in (
        "joint", "r3_sft", "r3_sft_no_reflect", "r3_sft_no_consistency",
        "r3_sft_grounded")] +
         [_run("joint_eqtime", "joint", _R3_STEPS, _FROM_START,
               budget="r3_sft")] +
         [Arm(n, f"configs/{n}.py:seed={{seed}}", {}, after="r3_sft")
          for n in ("r3_rl", "r3_rl_chain", "r3_rl_perfect05")] +
         # R3-RL, tree and chain, at rate 0: the start policy sampled on the
         # same images with the same keys, against which each mode's reward is
         # paired step by step.
         [Arm(f"{n}_lr0", f"configs/{n}.py:seed={{seed}}", {"optim.lr": 0.0},
              after="r3_sft") for n in ("r3_rl", "r3_rl_chain")] +
         # Root-stage RL alone: no reflection or refine gradient and no
         # supervised VQA / ITA term, so that the drafts' GRPO signal is all
         # of the update (and of Adam's moments); does the root reward rise
         # then? Its images and sampling keys are R3-RL's, so r3_rl_lr0
         # stays its baseline.
         [Arm("r3_rl_rootonly", "configs/r3_rl.py:seed={seed}", _ROOT_ONLY,
              after="r3_sft")] +
         # The same over the reference's 1,000 steps, with its own rate-0
         # run (one seed; at rate 0 the overrides only spare the unused
         # supervised batches).
         [Arm(n, "configs/r3_rl.py:seed={seed},steps=1000", o, after="r3_sft")
          for n, o in (("r3_rl_rootonly_1k", _ROOT_ONLY),
                       ("r3_rl_lr0_1k", {**_ROOT_ONLY, "optim.lr": 0.0}))] +
         # The RL rate sweep (the reference's 5e-6 is for a 7B model): R3-RL
         # at 4 and 10 times configs/r3_rl.py's 5e-5.
         [Arm(f"r3_rl_lr{lr}", "configs/r3_rl.py:seed={seed}",
              {"optim.lr": float(lr)}, after="r3_sft")
          for lr in ("2e-4", "5e-4")],
    rl_baseline=("r3_rl_lr0", "r3_rl_chain_lr0", "r3_rl_lr0_1k"),
    # Every loop against its drafts; R3-SFT and R3-RL, tree and chain, also
    # against joint training: for R3-SFT's steps (joint) and time
    # (joint_eqtime). The R3-RL arms train 200 steps more than R3-SFT.
    loops={**{a: ("joint", "joint_eqtime")
              for a in ("r3_sft", "r3_rl", "r3_rl_chain")},
           **{a: () for a in ("r3_sft_no_reflect", "r3_sft_no_consistency",
                              "r3_sft_grounded", "r3_rl_perfect05",
                              "r3_rl_rootonly", "r3_rl_lr2e-4")}},
    reference="r3_sft",
    base=R3_LOOP,
    seeds=5,
    scale={"total_steps": 20},
    metrics=R3_METRICS,
))

# The same question on the easy world (one object per image): the r3_testable
# study's start continues there, with the default world's number words so its
# vocabulary, and so its parameters, carry over (WorldConfig.number_words).
# `start` is that start scored on the easy world (one step at rate 0): its
# gate table there, and the point every arm's change is measured from.
_EASY = {**EASY_WORLD, "world.number_words": 3}
_EASY_R3 = {**_FROM_START, **_EASY}

register(Study(
    name="r3_testable_easy",
    doc="From the r3_testable study's start, on the easy world (one object per "
        "image, so no relations): the start scored there (`start`, "
        "one step at rate 0); joint training and R3-SFT for equal steps; "
        "R3-RL, and R3-RL at rate 0 as its reward baseline, from the R3-SFT "
        "run of the same seed.",
    arms=[_run("start", "r3_sft", 1, {**_EASY_R3, "optim.lr": 0.0,
                                      "optim.warmup_steps": 0})] +
         [_run(n, n, _R3_STEPS, _EASY_R3) for n in ("joint", "r3_sft")] +
         [Arm(n, "configs/r3_rl.py:seed={seed}", {**_EASY, **lr},
              after="r3_sft")
          for n, lr in (("r3_rl", {}), ("r3_rl_lr0", {"optim.lr": 0.0}))],
    rl_baseline="r3_rl_lr0",
    reference="r3_sft",
    start="start",
    base=R3_LOOP,
    scale={"total_steps": 20},
    metrics=R3_METRICS,
))

# `make demo`: from the shipped R3 start, short equal-length runs of joint
# training and R3-SFT, one seed.
DEMO_STEPS = 300

register(Study(
    name="demo",
    doc="The demo (`make demo`): from the shipped R3 start (understanding "
        "trained, captions not right, reflect and refine trained), "
        f"{DEMO_STEPS} steps of joint training and of R3-SFT, one seed, "
        "scored on the first 300 test images; R3-SFT's loop by round. Its "
        "figures are a smoke view, not results.",
    arms=[_run(n, n, DEMO_STEPS, {**_FROM_START,
                                   "final_eval.max_examples": 300})
          for n in ("joint", "r3_sft")],
    reference="joint",
    base=R3_LOOP,
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
