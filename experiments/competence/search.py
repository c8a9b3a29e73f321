"""The competence recipe search: named variants of the joint recipe, each a
`python -m r3jax.main` command, run with their CPU time recorded.

  python -m experiments.competence.search NAME [NAME ...]   # run (or resume)
  python -m experiments.competence.search NAME --until 3000 # stop at a step
  python -m experiments.competence.search --list            # the commands

A variant trains the whole schedule of a candidate base (validation every
500 steps), so the search's winner is continued, not trained again. A run
stopped at any point (kill, SIGTERM, a shutdown) resumes from its last
checkpoint when the same command runs again; each stretch of training
appends its wall and CPU seconds (user + system, this process's children, from
os.wait4) to <workdir>/cpu.jsonl, and the learning-curve table
(experiments.competence.report) adds them up.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.join("experiments", "competence", "runs")

# The schedule every variant is a candidate for (unless it names its own);
# the learning rate decays over it (cosine), so a variant stopped early has
# seen a high rate.
STEPS = 12_000
# Variants on a schedule of their own: name -> steps.
LONG = {"mix_sincos_rf_40k": 40_000, "rf_40k_rel4": 40_000,
        "rf_40k_rel4_canon": 40_000, "rf_40k_rel4_trace": 40_000,
        "rf_40k_trace_where": 40_000, "rf_40k_where_captions": 40_000}
# Variants that continue another's run from one of its shipped checkpoints
# (parameters, optimizer state, data position and schedule): name ->
# (parent, step). Their learning curves start at that step.
BRANCHES = {"rf_40k_rel4": ("mix_sincos_rf_40k", 19_270),
            "rf_40k_rel4_canon": ("mix_sincos_rf_40k", 19_270),
            "rf_40k_rel4_trace": ("mix_sincos_rf_40k", 19_270),
            "rf_40k_trace_where": ("rf_40k_rel4_trace", 24_237),
            "rf_40k_where_captions": ("rf_40k_trace_where", 27_609)}
# Variants trained from another config file than configs/joint.py: name ->
# (config file, the variant whose latest parameters start it, or
# "variant@step" for that variant's checkpoint shipped at step, or None).
AT_19270 = "mix_sincos_rf_40k@19270"
# Where such pinned starts are unpacked (git-ignored).
STARTS = os.path.join("runs", "competence_starts")
CONFIGS = {"rel_only": ("configs/understanding_only.py", AT_19270),
           "rel_only_xy": ("configs/understanding_only.py",
                           AT_19270),
           "rel_only_deep": ("configs/understanding_only.py",
                             AT_19270),
           "rel_only_deep_xy": ("configs/understanding_only.py",
                                AT_19270),
           "rel_only_alibi": ("configs/understanding_only.py",
                              AT_19270),
           "rel_only_deep_xy_alibi": ("configs/understanding_only.py",
                                      AT_19270),
           "rel_only_trace": ("configs/understanding_only.py",
                              AT_19270),
           "rel_only_xy_trace": ("configs/understanding_only.py",
                                 AT_19270),
           "rel_only_fusion": ("configs/understanding_only.py", AT_19270),
           "rel_only_restate": ("configs/understanding_only.py", AT_19270),
           "rel_only_restate_xy": ("configs/understanding_only.py",
                                   AT_19270),
           "rel_only_trace_where": ("configs/understanding_only.py",
                                    AT_19270),
           "rel_only_trace_where_xy": ("configs/understanding_only.py",
                                       AT_19270)}
CONFIGS["two_scratch"] = CONFIGS["two_scratch_dxa"] = (
    "configs/understanding_only.py", None)
for _name in ("rel_only", "rel_only_xy", "rel_only_deep", "rel_only_deep_xy",
              "rel_only_alibi", "rel_only_deep_xy_alibi", "rel_only_trace",
              "rel_only_xy_trace", "rel_only_fusion", "rel_only_restate",
              "rel_only_restate_xy", "rel_only_trace_where",
              "rel_only_trace_where_xy"):
  LONG[_name] = 4_000
LONG["two_scratch"] = LONG["two_scratch_dxa"] = 6_000
# The final parameters of rf_40k_where_captions, on a fresh 10,000-step
# schedule.
CONFIGS["where_captions_trace"] = ("configs/joint.py",
                                   "rf_40k_where_captions@40000")
LONG["where_captions_trace"] = 10_000
# The R3-testable start's search, (config, start, steps) each:
# rf_40k_trace_where's checkpoint at step 27,609 (plain captions) on VQA and
# ITA alone (understanding passes, captions stopped where they were?), or
# with the caption stream kept, scarce (2 or 1 captions a step); the last
# of those with the caption stream stopped, at 1e-4 for 1,000 steps, then
# at 3e-4 or 5e-4 for 750 more.
_UND, _JOINT = "configs/understanding_only.py", "configs/joint.py"
for _name, _config, _start, _steps in (
    ("caption_stop_27609", _UND, "rf_40k_trace_where@27609", 3_000),
    ("caption_scarce_27609", _JOINT, "rf_40k_trace_where@27609", 3_000),
    ("caption_scarce_long", _JOINT, "rf_40k_trace_where@27609", 6_000),
    ("scarce_long_stop", _UND, "caption_scarce_long@6000", 1_000),
    ("scarce_stop_3e4", _UND, "scarce_long_stop@1000", 750),
    ("scarce_stop_5e4", _UND, "scarce_long_stop@1000", 750),
    ("r3_warm", "configs/r3_sft.py", "scarce_stop_3e4@750", 3_000),
    ("r3_warm_long", "configs/r3_sft.py", "r3_warm@3000", 4_000),
    ("r3_warm_deep", "configs/r3_sft.py", "r3_warm@3000", 4_000)):
  CONFIGS[_name], LONG[_name] = (_config, _start), _steps
COMMON = ("--config.interference.enabled=False",
          "--config.eval_every_steps=500", "--config.ckpt_every_steps=500",
          "--config.progress_bar=False")
CONV = ("--config.model.stem=conv",)
SINCOS = ("--config.model.pos_init=sincos2d",)
WIDE_STEM = ("--config.model.stem_convs=2",)


def mix(vqa: int = 64, ita: int = 32, per_image: int = 4,
        captions: int = 16, captions_per_image: int = 1) -> tuple[str, ...]:
  """`captions`, `vqa` questions and `ita` ITA pairs a step, the last two
  `per_image` to an image: by default 40 images a step instead of 112 (0.30
  s against 0.47 s a step on 2 cores)."""
  cap = (f"--config.tasks.caption.batch_size={captions}",)
  if captions_per_image > 1:
    cap += (f"--config.tasks.caption.per_image={captions_per_image}",)
  return (*cap, f"--config.tasks.vqa.batch_size={vqa}",
          f"--config.tasks.vqa.per_image={per_image}",
          f"--config.tasks.ita.batch_size={ita}",
          f"--config.tasks.ita.per_image={per_image}")


MIX = mix()
# Relation questions drawn 4 times as often as each other type: 4 in 9 of a
# 6-question record's draws instead of 1 in 6.
REL4 = ('--config.tasks.vqa.type_weights={"relation":4}',)
# Relation questions trained in one phrasing per axis, "is A left of B ?"
# or "is A above B ?" (the same answer; r3jax.data.tasks.canonical_relation).
CANON = ("--config.data.relation_questions=canonical",)
# VQA relation questions alone (canonical), beside ITA.
REL_ONLY = ('--config.tasks.vqa.type_weights={"existence":0,"count":0,'
            '"color":0,"shape":0,"size":0}',
            "--config.tasks.vqa.batch_size=64",
            "--config.tasks.vqa.per_image=4", *CANON)
# The decoder's cross-attention values carry the image tokens' patch
# coordinates (model.cross_pos="xy", zero at first).
XY = ("--config.model.cross_pos=xy",)
# Parameters the start lacks keep their fresh initialisation.
PARTIAL = ("--config.init_from_partial=True",)
# Two more decoder blocks on top of a start's two, starting as the identity
# (model.dec_identity_from; their parameters are fresh: init_from_partial).
GROW = ("--config.model.dec_depth=4", "--config.model.dec_identity_from=2")
# ALiBi slopes in the decoder's self-attention (model.dec_alibi, learned,
# starting at 2^(-8h/N)): heads that read the nearest words, so the second
# object's description can be read apart from the first's.
ALIBI = ("--config.model.dec_alibi=True",)
# Relation answers trained after the two objects' grid indices on the
# question's axis ("zero two yes", config.data.relation_answers): each
# position is read into a word of its own, which later positions read as
# an input, before the comparison.
TRACE = ("--config.data.relation_answers=trace",)
# Each index written after its object's description, copied from the
# question ("the circle zero the square two yes"): the index is then read
# where the description ends, where the start already selects the object
# it names (per-head probe); the VQA sequences grow to 32 tokens.
RESTATE = ("--config.data.relation_answers=restate",
           "--config.tasks.vqa.max_len=32")
# Half the VQA draws replaced by position questions about one object
# (data.position_questions).
WHERE = ("--config.data.position_questions=0.5",)
# Captions trained with each single object of the listing followed by its
# column and row, as position questions answer them (data.caption_positions;
# up to 42 words, so 48 tokens).
CAPTION_WHERE = ("--config.data.caption_positions=True",
                 "--config.tasks.caption.max_len=48")
# The captions' relation phrases also written after the two objects' grid
# indices on their axis ("the square is two zero right of the circle",
# data.caption_trace; up to 52 words with the listed positions, so 56
# tokens).
CAPTION_TRACE = ("--config.data.caption_positions=True",
                 "--config.data.caption_trace=True",
                 "--config.tasks.caption.max_len=56")
# A fresh schedule for a continued base: after a 200-step warmup of a fresh
# optimizer, a peak rate about where the 40,000-step schedule was at step
# 27,609 (4.5e-4), where rf_40k_where_captions learned its written positions
# (that schedule ends at 2e-5).
REFRESH = ("--config.optim.lr=5e-4", "--config.optim.warmup_steps=200")
# Two early-fusion blocks (model.fusion_depth, identity at first): the image
# tokens read the question, then each other, before the decoder reads them.
FUSION = ("--config.model.fusion_depth=2",)
# Two objects in every image (a world of its own, for a learnability test),
# VQA (relation drawn 4 times as often as each other type) and ITA, 16 and
# 8 images a step.
TWO = ("--config.world.min_objects=2", "--config.world.max_objects=2",
       "--config.tasks.vqa.batch_size=64", "--config.tasks.vqa.per_image=4",
       "--config.tasks.ita.batch_size=32", "--config.tasks.ita.per_image=4",
       *REL4)
DEEP = ("--config.model.enc_overrides={\"width\":128,\"depth\":4,"
        "\"heads\":4,\"mlp\":512}", "--config.model.dec_depth=4")
# Decoder positions for the R3 tasks (max_len 144), so that every R3 arm can
# start from the base; rows past a task's length are never read or trained.
R3_POSITIONS = ("--config.model.max_len=144",)


def plain_captions(stream: tuple[str, ...], *extra: str) -> tuple[str, ...]:
  """The flags of the runs after rf_40k_trace_where's step 27,609 that keep
  plain captions (the R3-testable start's lineage): its model, the task mix
  `stream`, its VQA formats, then `extra`."""
  return (CONV + SINCOS + WIDE_STEM + R3_POSITIONS + stream + REL4 + TRACE +
          WHERE + extra)


def rate(lr: str, warmup: int, every: int = 250) -> tuple[str, ...]:
  return (f"--config.optim.lr={lr}", f"--config.optim.warmup_steps={warmup}",
          f"--config.eval_every_steps={every}")

# The R3 warm-up's continuation: 32 reflect and 32 refine examples a step.
_R3_WARM_LONG = plain_captions(mix(captions=1), *rate("5e-4", 100, 500),
                               "--config.tasks.reflect.batch_size=32",
                               "--config.tasks.refine.batch_size=32")

# name -> (what it changes, its flags beyond COMMON)
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mix": ("conv stem; caption 16 / VQA 64 (4 per image) / ITA 32 (4 per "
            "image) per step; learned positions (random start)", CONV + MIX),
    "mix_sincos": ("mix, positions starting as the 2-D sin-cos code",
                   CONV + MIX + SINCOS),
    "mix_sincos_rf": ("mix_sincos with 2 extra residual convolutions in the "
                      "stem: a token sees 27 x 27 pixels instead of 11 x 11",
                      CONV + MIX + SINCOS + WIDE_STEM),
    "mix_sincos_q2": ("mix_sincos with twice the questions and ITA pairs "
                      "per image: VQA 128 (8 per image), ITA 64 (8 per "
                      "image), the same 40 images a step",
                      CONV + mix(128, 64, 8) + SINCOS),
    "mix_sincos_cap": ("mix_sincos with 64 captions a step (2 per image): "
                       "a caption supervises every fact of its image",
                       CONV + mix(captions=64, captions_per_image=2) + SINCOS),
    "mix_sincos_rf_40k": ("mix_sincos_rf on a 40,000-step schedule, with "
                          "decoder positions for the R3 tasks",
                          CONV + MIX + SINCOS + WIDE_STEM + R3_POSITIONS),
    "rf_40k_rel4": ("mix_sincos_rf_40k continued from its step 19,270 with "
                    "relation questions drawn 4 times as often as each "
                    "other type",
                    CONV + MIX + SINCOS + WIDE_STEM + R3_POSITIONS + REL4),
    "rf_40k_rel4_canon": ("rf_40k_rel4 with relation questions trained in "
                          "one phrasing per axis, \"is A left of B ?\" or "
                          "\"is A above B ?\"",
                          CONV + MIX + SINCOS + WIDE_STEM + R3_POSITIONS +
                          REL4 + CANON),
    "rf_40k_rel4_trace": ("rf_40k_rel4 with relation answers trained "
                          "after the two objects' grid indices (as "
                          "rel_only_trace, here in the whole recipe and in "
                          "every phrasing)",
                          CONV + MIX + SINCOS + WIDE_STEM + R3_POSITIONS +
                          REL4 + TRACE),
    "rf_40k_trace_where": ("rf_40k_rel4_trace continued from its step "
                           "24,237 with half the VQA draws asking one "
                           "object's column and row (as "
                           "rel_only_trace_where, which answers canonical "
                           "relation questions at 0.97)",
                           CONV + MIX + SINCOS + WIDE_STEM + R3_POSITIONS +
                           REL4 + TRACE + WHERE),
    "rf_40k_where_captions": ("rf_40k_trace_where continued from its step "
                              "27,609 with the listed objects' columns and "
                              "rows written in the captions: that start "
                              "answers relation questions from written "
                              "positions while its captions' relation "
                              "clauses are near chance",
                              CONV + MIX + SINCOS + WIDE_STEM + R3_POSITIONS +
                              REL4 + TRACE + WHERE + CAPTION_WHERE),
    "where_captions_trace": ("rf_40k_where_captions' final parameters "
                             "(config.init_from) on a fresh 10,000-step "
                             "schedule, with each caption relation phrase "
                             "also written after its two objects' grid "
                             "indices on its axis: the captions' relation "
                             "clauses were near chance while VQA, which "
                             "writes the same indices before its answer, "
                             "answers relations at 0.98",
                             CONV + MIX + SINCOS + WIDE_STEM + R3_POSITIONS +
                             REL4 + TRACE + WHERE + CAPTION_TRACE + REFRESH),
    "caption_stop_27609": ("rf_40k_trace_where's checkpoint at step 27,609 "
                           "(config.init_from) with the caption stream "
                           "stopped: VQA and ITA alone, as in that run, on "
                           "a fresh 3,000-step schedule. Its captions are "
                           "plain (no written positions) and stay as they "
                           "were, while relation answers may reach their "
                           "gate: a regime where understanding can check "
                           "generation (R3)",
                           plain_captions(mix()[1:], *REFRESH)),
    "caption_scarce_27609": ("caption_stop_27609 with 2 captions a step "
                             "instead of none: without a caption stream "
                             "that start's captions collapse (validation "
                             "F1 0.76 to 0.15 in 2,500 steps) instead of "
                             "staying where they were",
                             plain_captions(mix(captions=2), *REFRESH)),
    "caption_scarce_long": ("caption_scarce_27609 with 1 caption a step on "
                            "a 6,000-step schedule: there relation was "
                            "still rising (validation 0.901 to 0.960 from "
                            "step 500 to 2,500) while V_strict rose past "
                            "0.6 with 2 captions a step",
                            plain_captions(mix(captions=1), *REFRESH)),
    "scarce_long_stop": ("caption_scarce_long's final parameters "
                         "(understanding gates passed; test V_strict 0.623) "
                         "trained on VQA and ITA alone for 1,000 steps at "
                         "a peak rate of 1e-4: captions drift down from "
                         "where they were (caption_stop_27609 lost F1 0.10 "
                         "in 500 steps at 5e-4) while understanding trains "
                         "on",
                         plain_captions(mix()[1:], *rate("1e-4", 50))),
    **{f"scarce_stop_{r}e4": (
        f"scarce_long_stop's final parameters (test relation 0.950, "
        f"V_strict 0.602: captions held at 1e-4) on VQA and ITA alone for "
        f"750 more steps at a peak rate of {r}e-4 (100 warmup steps)",
        plain_captions(mix()[1:], *rate(f"{r}e-4", 100)))
       for r in (3, 5)},
    "r3_warm": ("the R3-testable start (scarce_stop_3e4) trained on the "
                "reflect and refine stages (R3-SFT's drafts: corrupted "
                "references and, refreshed every 300 steps, its own "
                "captions) beside VQA and ITA for 3,000 steps at a peak "
                "rate of 5e-4, with 1 caption a step as in its lineage: "
                "1,000 R3-SFT steps from that start learned neither stage "
                "(round-1 stop rate 0.93, refine right 0.000)",
                plain_captions(mix(captions=1), *rate("5e-4", 100, 500))),
    "r3_warm_long": ("r3_warm's final parameters on a fresh 4,000-step "
                     "schedule with twice the reflect and refine examples "
                     "(32 each a step): after 3,000 steps the loop still "
                     "made more captions worse than better in round 1",
                     _R3_WARM_LONG),
    "r3_warm_deep": ("r3_warm_long with two more decoder blocks on top of "
                     "the start's two, starting as the identity: refine's "
                     "teacher-forced accuracy falls from 0.98 to 0.86 along "
                     "the refined caption, which mostly copies its draft "
                     "(experiments/r3_testable/pilot/"
                     "refine_positions_r3_warm.json)",
                     _R3_WARM_LONG + GROW + PARTIAL),
    "rel_only": ("the parameters of mix_sincos_rf_40k at step 19,270 "
                 "(config.init_from: a fresh optimizer and a 4,000-step "
                 "schedule) trained on VQA relation questions alone, in the "
                 "canonical phrasing, beside ITA: can this model learn "
                 "relations from a start that sees every attribute",
                 REL_ONLY),
    "rel_only_xy": ("rel_only with the patch coordinates in the decoder's "
                    "cross-attention values (model.cross_pos=\"xy\"): does "
                    "an exact position where the decoder reads the image "
                    "start relations",
                    REL_ONLY + XY + PARTIAL),
    "rel_only_deep": ("rel_only with a 4-block decoder: two identity-started "
                      "blocks on top of the start's two (more hops between "
                      "reading the two objects and comparing them)",
                      REL_ONLY + GROW + PARTIAL),
    "rel_only_deep_xy": ("rel_only_deep with rel_only_xy's coordinates",
                         REL_ONLY + GROW + XY + PARTIAL),
    "rel_only_alibi": ("rel_only with ALiBi in the decoder's self-attention "
                       "(model.dec_alibi): at REF_B's last word no head "
                       "selects object B (rel_only_xy, per-head probe), as "
                       "the words of REF_A are mixed into its query",
                       REL_ONLY + ALIBI + PARTIAL),
    "rel_only_deep_xy_alibi": (
        "rel_only_deep_xy with ALiBi: the start selects object A at REF_A's "
        "last word only in its last layer, which no later position reads, "
        "and object B nowhere; two more blocks let the answer read what "
        "layer 2 selects, and ALiBi lets REF_B's words be read apart from "
        "REF_A's",
        REL_ONLY + GROW + XY + ALIBI + PARTIAL),
    "rel_only_trace": ("rel_only with relation answers trained after the "
                       "two objects' grid indices (\"zero two yes\"): the "
                       "start selects object A where its description ends "
                       "but the answer position reads neither position; "
                       "written indices make each selection a prediction "
                       "of its own and hand it to the comparison as a word",
                       REL_ONLY + TRACE),
    "rel_only_xy_trace": ("rel_only_trace with rel_only_xy's coordinates: "
                          "the index an attended object's patches give is "
                          "then a linear read of the cross-attention values",
                          REL_ONLY + TRACE + XY + PARTIAL),
    "rel_only_restate": ("rel_only_trace with each index written after its "
                         "object's description, copied from the question: "
                         "rel_only_trace's model selects neither object "
                         "where it writes the first index (the <sep>), "
                         "while its last block selects object A where A's "
                         "description ends",
                         REL_ONLY + RESTATE),
    "rel_only_restate_xy": ("rel_only_restate with rel_only_xy's "
                            "coordinates: rel_only_restate copies both "
                            "descriptions right by step 1,500 but writes "
                            "the indices it writes most often, whatever the "
                            "image; the coordinates put each attended "
                            "object's position in the cross-attention "
                            "output exactly",
                            REL_ONLY + RESTATE + XY + PARTIAL),
    "rel_only_trace_where": ("rel_only_trace with half its VQA draws "
                             "asking one object's column and row (\"the "
                             "red circle ?\" -> \"zero two\"): can the "
                             "model read the position of an object one "
                             "description names, the step the indices "
                             "need, and does it then write them",
                             REL_ONLY + TRACE + WHERE),
    "rel_only_trace_where_xy": ("rel_only_trace_where with rel_only_xy's "
                                "coordinates: rel_only_trace_where reads "
                                "one named object's column at 0.49 after "
                                "1,000 steps (chance 1/3); with the "
                                "attended patches' exact centres in the "
                                "cross-attention values, is that reading "
                                "what is slow",
                                REL_ONLY + TRACE + WHERE + XY + PARTIAL),
    "rel_only_fusion": ("rel_only with two early-fusion blocks: the "
                        "object a phrase names can mark itself among the "
                        "image tokens and compare itself with the other "
                        "named object there (a relation computed between "
                        "image tokens, as a relation network does), so the "
                        "decoder need not select two objects from one query",
                        REL_ONLY + FUSION + PARTIAL),
    "two_scratch": ("a learnability test of relations from scratch: the "
                    "mix_sincos_rf model (2 decoder blocks) trained on VQA "
                    "and ITA in a world of two objects per image",
                    CONV + SINCOS + WIDE_STEM + TWO),
    "two_scratch_dxa": ("two_scratch with a 4-block decoder, ALiBi and the "
                        "cross-attention coordinates",
                        CONV + SINCOS + WIDE_STEM + TWO +
                        ("--config.model.dec_depth=4",) + XY + ALIBI),
    "mix_sincos_rf_dxa": ("mix_sincos_rf from scratch with a 4-block "
                          "decoder, ALiBi and the cross-attention "
                          "coordinates: the decoder options the relation "
                          "diagnosis points to, on the same 12,000-step "
                          "schedule",
                          CONV + MIX + SINCOS + WIDE_STEM +
                          ("--config.model.dec_depth=4",) + XY + ALIBI),
    "deep_sincos": ("mix_sincos with 4 encoder and 4 decoder layers (and "
                    "decoder positions for the R3 tasks)",
                    CONV + MIX + SINCOS + DEEP + R3_POSITIONS),
}


def steps(name: str) -> int:
  return LONG.get(name, STEPS)


def workdir(name: str) -> str:
  return os.path.join(ROOT, name)


def lineage(name: str) -> list[str]:
  """The variants whose training `name`'s parameters went through, first
  to last: each branch's parent (BRANCHES) and each pinned start's variant
  (CONFIGS), up to one trained from scratch. Each trained only up to the
  step its successor left it at, so their CPU times add up."""
  return ([] if parent(name) is None else lineage(parent(name)[0])) + [name]


def parent(name: str) -> tuple[str, int | None] | None:
  """(variant, step) whose parameters `name` starts from (step None: that
  variant's latest), or None for a variant trained from scratch."""
  if name in BRANCHES:
    return BRANCHES[name]
  start = CONFIGS.get(name, (None, None))[1]
  if start is None:
    return None
  variant, _, step = start.partition("@")
  return variant, int(step) if step else None


def start_dir(start: str) -> str:
  """The directory a variant's parameters start from: the workdir of
  variant `start`, or for "variant@step" a directory outside git holding
  that variant's config.json and its checkpoint shipped at step (so the
  start stays put while the variant trains on)."""
  if "@" not in start:
    return workdir(start)
  name, step = start.split("@")
  out = os.path.join(STARTS, f"{name}_{step}")
  if not os.path.isdir(os.path.join(out, "checkpoints", step)):
    src = os.path.join(workdir(name), "resume", step)
    if not os.path.isdir(src):
      raise SystemExit(f"{start}: {src} is not there (git holds it at the "
                       "commit that shipped it)")
    os.makedirs(out, exist_ok=True)
    shutil.copy(os.path.join(workdir(name), "config.json"), out)
    shutil.copytree(src, os.path.join(out, "checkpoints", step))
  return out


def command(name: str) -> list[str]:
  if name not in VARIANTS:
    raise SystemExit(f"unknown variant {name!r}; known: {sorted(VARIANTS)}")
  path, start = CONFIGS.get(name, ("configs/joint.py", None))
  config = f"{path}:steps={steps(name)}" + (
      f",base={start_dir(start)}" if start else "")
  return [sys.executable, "-m", "r3jax.main", f"--config={config}",
          f"--workdir={workdir(name)}", *COMMON, *VARIANTS[name][1]]


def shown(name: str) -> str:
  cmd = command(name)
  return " ".join(["python", *map(shlex.quote, cmd[1:])])


def last_step(wd: str) -> int:
  path = os.path.join(wd, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  step = 0
  with open(path) as f:
    for line in f:
      step = max(step, json.loads(line)["step"])
  return step


def ship(name: str) -> str | None:
  """Copies the variant's latest checkpoint to <workdir>/resume/<step>, which
  git keeps (checkpoints/ it does not): a fresh clone resumes the run there
  (restore_shipped) instead of starting it again."""
  wd = workdir(name)
  ckpts = os.path.join(wd, "checkpoints")
  steps = sorted(int(s) for s in os.listdir(ckpts) if s.isdigit() and
                 os.path.exists(os.path.join(ckpts, s, "commit_success.txt")))
  if not steps:
    return None
  out = os.path.join(wd, "resume")
  shutil.rmtree(out, ignore_errors=True)
  shutil.copytree(os.path.join(ckpts, str(steps[-1])),
                  os.path.join(out, str(steps[-1])))
  return os.path.join(out, str(steps[-1]))


def restore_shipped(wd: str, name: str | None = None) -> None:
  """A run with no checkpoints of its own starts from its shipped one, or,
  a branch that has none yet, from its parent's shipped checkpoint."""
  ckpts, shipped = os.path.join(wd, "checkpoints"), os.path.join(wd, "resume")
  if os.path.isdir(ckpts) and any(s.isdigit() for s in os.listdir(ckpts)):
    return
  if os.path.isdir(shipped):
    for step in os.listdir(shipped):
      shutil.copytree(os.path.join(shipped, step), os.path.join(ckpts, step))
  elif name in BRANCHES:
    parent, step = BRANCHES[name]
    src = os.path.join(workdir(parent), "resume", str(step))
    if not os.path.isdir(src):
      raise SystemExit(f"{name} continues {parent} from step {step}, but "
                       f"{src} is not there (git holds it at the commit that "
                       "shipped it)")
    shutil.copytree(src, os.path.join(ckpts, str(step)))


def run(name: str, until: int = 0) -> int:
  """Trains (or resumes) variant `name`, up to step `until` when > 0 (the
  run is then stopped by SIGTERM and saves that step); appends the
  stretch's wall and CPU seconds to its cpu.jsonl; returns the command's
  exit status (75: stopped before the schedule's end, resumable)."""
  wd = workdir(name)
  os.makedirs(wd, exist_ok=True)
  restore_shipped(wd, name)
  start = CONFIGS.get(name, (None, None))[1]
  if start and "@" not in start:  # its start's checkpoint, shipped for a
    restore_shipped(workdir(start), start)  # fresh clone
  start, t0 = last_step(wd) or BRANCHES.get(name, (None, 0))[1], time.time()
  if until and start >= until:
    return 0
  with open(os.path.join(wd, "train.log"), "a") as log:
    proc = subprocess.Popen(command(name), stdout=log, stderr=subprocess.STDOUT)
    try:
      while until and proc.poll() is None and last_step(wd) < until:
        time.sleep(2)
      if proc.poll() is None and until:
        proc.terminate()  # the run saves a checkpoint of its current step
      _, status, usage = os.wait4(proc.pid, 0)
    except KeyboardInterrupt:
      proc.terminate()
      _, status, usage = os.wait4(proc.pid, 0)
  record = {"from_step": start, "to_step": last_step(wd),
            "wall_s": time.time() - t0,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "exit": os.waitstatus_to_exitcode(status), "started": t0,
            "nproc": os.cpu_count()}
  with open(os.path.join(wd, "cpu.jsonl"), "a") as f:
    f.write(json.dumps(record) + "\n")
  return record["exit"]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("names", nargs="*")
  p.add_argument("--list", action="store_true")
  p.add_argument("--ship", action="store_true",
                 help="copy each named variant's latest checkpoint to its "
                 "resume/ (kept in git) instead of training")
  p.add_argument("--until", type=int, default=0,
                 help="stop at this step (resumable), 0: the schedule's end")
  args = p.parse_args(argv)
  if args.list or not args.names:
    for name, (what, _) in VARIANTS.items():
      print(f"{name}: {what}\n  {shown(name)}")
    return 0
  for name in args.names:
    command(name)  # unknown names fail before anything runs
  if args.ship:
    for name in args.names:
      print(ship(name))
    return 0
  return max(run(name, args.until) for name in args.names)


if __name__ == "__main__":
  sys.exit(main())
