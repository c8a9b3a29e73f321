"""RESULTS.md for a study: mean +- std over seeds per arm, a comparison with
the reference arm, each arm's change from the start arm, a caption-F1 vs
VQA-accuracy plot, per-group gradient cosines, R3 accuracy by round, wall
time, the configs, the hardware and the commands. A written reading of the
results, <root>/<study>/reading.md, goes under the title when it exists.

  from experiments import report
  report.collect("experiments", "mitigation")   # -> path of RESULTS.md

The statistics live in r3jax.analysis (study, interference, rounds), which
the notebooks share. Arms of one seed share that seed's start, so arms are
compared seed by seed: the mean paired difference with its t-based 95%
interval and the paired t-test's p-value (study.paired, n >= 2 shared
seeds), against the reference arm and, as changes, against the start arm.
All of a study's comparisons form one family, corrected by Holm
(study.holm); an arm "differs" where the adjusted p < 0.05, and the report
says how many comparisons were made.

Everything comes from what git keeps of each run (result.json, config.json
and series.csv, the interference statistics of its training rows that the
cosine section reads; r3jax.analysis.interference.series): the cosine
section reads a run's metrics.jsonl when it is there and its series.csv when
not, the same numbers (collect writes series.csv from the log first), so
that RESULTS.md made in a fresh clone is the one made beside the logs.
Runs with neither (made before series.csv existed) are named in the sections
they are missing from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import studies as studies_lib  # noqa: E402
from r3jax import config as config_lib  # noqa: E402
from r3jax.analysis import competence  # noqa: E402
from r3jax.analysis import interference  # noqa: E402
from r3jax.analysis import rounds as rounds_lib  # noqa: E402
from r3jax.analysis.study import (  # noqa: E402
    arms as arm_order, cell, changes, differs, holm, load, paired,
    pareto_front, plot_pareto, summarize, wall_seconds, workdirs)
from r3jax.run import world_setup  # noqa: E402

__all__ = ["collect", "differs", "load", "mark_unrebuildable", "pareto_front",
           "plot", "recollect_statistics", "summarize"]

ALPHA = 0.05


def _reference(arms: Sequence[str], known) -> str:
  """The arm the others are compared with: the study's, else the first."""
  return known.reference if known else arms[0]


def _compared(arms: Sequence[str], known) -> list[str]:
  """The arms of the paired comparisons: all but the study's rate-0 RL arms,
  which keep their start's parameters (compared in the RL-reward section)."""
  return [a for a in arms if not (known and a in known.rl_baselines)]


def _family(results, arms, reference, start, metrics) -> dict:
  """(arm, other, metric) -> (mean, lo, hi, p, n, holm p) for every paired
  comparison of the study: each arm against the reference and against the
  start arm, on every metric but times (study.paired; missing with < 2
  shared seeds); Holm over all of them."""
  keys = [k for k, _ in metrics if not k.endswith("seconds")]
  found = {}
  for other in dict.fromkeys(x for x in (reference, start) if x):
    for a in arms:
      for k in keys:
        if a == other or (other, a, k) in found:  # the same pair once
          continue
        if (got := paired(results, a, other, k)) is not None:
          found[a, other, k] = got
  adjusted = holm([v[3] for v in found.values()])
  return {key: (*v, q) for (key, v), q in zip(found.items(), adjusted)}


def _comparison(family, arm, reference, metrics) -> str:
  if arm == reference:
    return "reference"
  mine = {k: v for (a, o, k), v in family.items()
          if a == arm and o == reference}
  mine.update({k: (-v[0], -v[2], -v[1], *v[3:])
               for (a, o, k), v in family.items()
               if a == reference and o == arm})
  if not mine:
    return "n/a (< 2 shared seeds)"
  found = [f"{label} {'+' if mine[k][0] > 0 else '−'}"
           for k, label in metrics if k in mine and mine[k][5] < ALPHA]
  return ", ".join(found) if found else "no"


def _paired_section(family, reference, metrics) -> list[str]:
  labels = dict(metrics)
  rows = [[f"`{a}`", f"`{o}`", labels.get(k, k),
           f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}]", str(n), f"{p:.3g}",
           f"{q:.3g}" + (" *" if q < ALPHA else "")]
          for (a, o, k), (m, lo, hi, p, n, q) in family.items()]
  if not rows:
    return []
  return ["## Paired comparisons", "",
          f"Each arm minus `{reference}` (and minus the start arm, under "
          "Change), seed by seed over the seeds both ran: the mean "
          "difference with its t-based 95% interval, the paired t-test's p "
          f"and Holm's adjusted p over all {len(family)} comparisons of this "
          f"study; * marks adjusted p < {ALPHA}.", "",
          *_table(["arm", "minus", "metric", "mean difference [95% CI]",
                   "seeds", "p", "Holm p"], rows),
          *_constant_note(family.values()), ""]


def _last_round(results, arm: str) -> int | None:
  """The last round of the loop every run of `arm` scored (r3/round<k>/*)."""
  found = [set(rounds_lib.scores(r["metrics"])["v_strict"].dropna().index)
           for r in results
           if r["arm"] == arm and rounds_lib.has_rounds(r["metrics"])]
  common = set.intersection(*found) if found else set()
  return max(common) if common and max(common) > 0 else None


def _loop_section(results, loops: Mapping[str, Sequence[str]]) -> list[str]:
  """Does the loop raise its captions: each loop arm's captions after its
  last round minus its own drafts, and minus the captions of each arm it is
  set against (Study.loops), on V_strict and F1, paired over seeds; Holm
  over this section's comparisons."""
  found, rounds = {}, set()
  for arm, against in loops.items():
    if (k := _last_round(results, arm)) is None:
      continue
    rounds.add(k)
    for key, name in (("v_strict", "V_strict"), ("f1", "F1")):
      for other, ref in ((arm, f"r3/round0/{key}"),
                         *((o, f"caption/{key}") for o in against)):
        v = paired(results, arm, other, f"r3/round{k}/{key}", ref)
        if v is not None:
          what = "its drafts" if other == arm else f"`{other}`"
          found[arm, f"{name}: after the loop minus {what}"] = v
  if not found:
    return []
  return ["## The loop against its drafts and against training without it",
          "",
          "Each loop arm's test captions after its last round "
          f"(round {', '.join(map(str, sorted(rounds)))}) minus its own "
          "drafts (round 0, the greedy captions the caption metrics score), "
          "and minus the captions of the arms without the loop it is set "
          "against, seed by seed: mean difference, t-based 95% interval, "
          "the paired t-test's p and Holm's adjusted p over these "
          f"{len(found)} comparisons (apart from the study's family above); "
          f"* marks adjusted p < {ALPHA}.", "",
          *_holm_table(found), ""]


# Understanding, against the exported start (Study.base).
UNDERSTANDING = (
    *((f"vqa/qtype/{q}/accuracy", f"VQA {q}") for q in (
        "color", "size", "shape", "count", "existence", "relation")),
    ("ita/accuracy", "ITA accuracy"), ("ita/yes_rate", "ITA yes"))
BASE = "<start>"  # the exported start's results, under every seed
UNDERSTANDING_DATA = ("source", "seed", "relation_answers",
                      "relation_questions")


def _understanding_section(results, arms: Sequence[str], base: str
                           ) -> list[str]:
  """Does understanding rise or fall: each arm minus the exported start on
  VQA by question type and ITA (UNDERSTANDING), over seeds: the start is
  one model scored once on the same test split, so this is a one-sample t
  over the arm's seeds (study.paired against the start's value under every
  seed); Holm over this section's comparisons."""
  exported, _ = exported_start(base)

  def test_set(d):  # what a run's test items and their scoring depend on
    c = config_lib.load_saved(os.path.join(d, "config.json"))
    return (world_setup.world_config(c),
            tuple(c.data[k] for k in UNDERSTANDING_DATA),
            c.data.split_sizes["test"], c.final_eval.split,
            c.final_eval.max_examples)
  # Only arms scored on the start's test set: its world (not, say, the easy
  # world's), its data and its evaluation, with as many items of each kind.
  home = test_set(os.path.join(studies_lib.ROOT, base))
  counts = [k for k in exported["metrics"] if k.endswith("count")]

  def same(r):
    return (test_set(r["workdir"]) == home and
            all(r["metrics"].get(k) == exported["metrics"][k]
                for k in counts))
  arms = [a for a in arms if all(same(r) for r in results if r["arm"] == a)]
  seeds = {r["seed"] for r in results}
  pseudo = [{"arm": BASE, "seed": s, "metrics": exported["metrics"]}
            for s in seeds]
  labels = dict(UNDERSTANDING)
  found = {(a, k): v for a in arms for k in labels
           if (v := paired([*results, *pseudo], a, BASE, k)) is not None}
  if not found:
    return []
  start = [f"{labels[k]} {exported['metrics'][k]:.4f}" for k in labels
           if k in exported["metrics"]]
  return ["## Understanding against the start", "",
          f"Each arm minus the start `{base}` on VQA accuracy by question "
          "type and ITA, on the same test split (the start: "
          f"{', '.join(start)}). The start is one model scored once, so each "
          "row is a one-sample t over the arm's seeds: mean difference, "
          "t-based 95% interval, p, and Holm's adjusted p over these "
          f"{len(found)} comparisons (apart from the families above); "
          f"* marks adjusted p < {ALPHA}.", "",
          *_holm_table(found, labels.get), ""]


CONSTANT = ("A difference equal in every seed (interval a point) has no t "
            "statistic: its p is the exact two-sided sign test's, 2 / 2^n "
            "for n seeds (1 for no difference; study.paired).")


def _constant_note(values) -> list[str]:
  """CONSTANT under a table with a row of study.paired's constant case."""
  if any(v[1] == v[2] and v[0] != 0.0 for v in values):
    return ["", CONSTANT]
  return []


def _holm_table(found: Mapping[tuple[str, str], tuple], label=str
                ) -> list[str]:
  """A family of paired comparisons {(arm, measure): study.paired's tuple}
  as a table, with Holm's adjusted p over the family."""
  adjusted = holm([v[3] for v in found.values()])
  rows = [[f"`{a}`", label(k), f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}]", str(n),
           f"{p:.3g}", f"{q:.3g}" + (" *" if q < ALPHA else "")]
          for ((a, k), (m, lo, hi, p, n)), q in zip(found.items(), adjusted)]
  return _table(["arm", "measure", "mean difference [95% CI]", "seeds", "p",
                 "Holm p"], rows) + _constant_note(found.values())


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  return (["| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] * len(head)) + "|"] +
          ["| " + " | ".join(r) + " |" for r in rows])


def plot(path: str, summary, arms: Sequence[str], title: str) -> list[str]:
  """Caption F1 vs VQA accuracy (study.plot_pareto) saved to `path`."""
  fig, ax = plt.subplots(figsize=(6, 4.5))
  shown = plot_pareto(ax, summary, arms)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return shown


# Where an arm's accuracy comes from: question types and answer formats.
DETAIL = (*((f"vqa/qtype/{q}/accuracy", q) for q in (
    "color", "size", "shape", "count", "existence", "relation")),
          ("ita/yes_rate", "ITA yes"), ("ita/invalid_rate", "ITA invalid"),
          ("caption/parse_rate", "caption parses"),
          ("caption/hallucination", "hallucination"))


def _change_section(results, start, arms, metrics, family) -> list[str]:
  metrics = [(k, label) for k, label in metrics if not k.endswith("seconds")]
  delta = changes(results, start, [k for k, _ in metrics])

  def marked(a, k):
    text = cell(delta[a].get(k), signed=True)
    got = family.get((a, start, k)) or family.get((start, a, k))
    return text + " *" if got and got[5] < ALPHA else text
  rows = [[f"`{a}`"] + [marked(a, k) for k, _ in metrics]
          for a in arms if a in delta]
  return [f"## Change from `{start}`", "",
          f"Per seed, the arm's metric minus `{start}`'s (same seed); mean ± "
          "std over seeds; * marks a change whose paired t-test has Holm-"
          f"adjusted p < {ALPHA} (Paired comparisons, below).", "",
          *_table(["arm"] + [label for _, label in metrics], rows), ""]


COSINE_SECTION = "## Gradient cosine by parameter group"
# The sections computed from the runs' logged series (metrics.jsonl or
# series.csv) rather than their result.json.
LOG_SECTIONS = (COSINE_SECTION,)
LOGS_GONE = ("Not rebuildable from git: this section was computed from the "
             "runs' metrics.jsonl logs, which git does not hold, before the "
             "runner kept each run's series.csv; `report.collect` in a clone "
             "cannot make it again (`report.recollect_statistics` keeps it "
             "as it is).")


def _unlogged(out_dir, dirs: Mapping[str, list[str]]) -> list[str]:
  """A note naming the runs with neither metrics.jsonl nor series.csv (their
  logs gone, from before series.csv was kept), [] when there are none."""
  runs = [wd for ds in dirs.values() for wd in ds]
  gone = [wd for wd in runs if not interference.has_series(wd)]
  if not gone:
    return []
  return [f"Not rebuildable from git: {len(gone)} of the {len(runs)} runs "
          "have neither metrics.jsonl nor series.csv (logs git does not "
          "hold), so this section leaves them out: " + ", ".join(
              f"`{os.path.relpath(wd, out_dir)}`" for wd in gone) + ".", ""]


def _cosine_section(out_dir, dirs: Mapping[str, list[str]]) -> list[str]:
  unlogged = _unlogged(out_dir, dirs)
  table = interference.compare_arms(dirs, since=0.5)
  if table.empty:
    return [COSINE_SECTION, "", *unlogged] if unlogged else []
  pairs = sorted(table.index.get_level_values("pair").unique())
  arms = list(table.index.get_level_values("arm").unique())
  # Pairs logged without per-group cosines (R3-RL's rl:<task>) get no panel,
  # and with none of those there is no per-group figure.
  grouped = [p for p in pairs if table.xs(p, level="pair").drop(
      columns="global").notna().any().any()]
  if grouped:
    fig, axes = plt.subplots(1, len(grouped), squeeze=False, figsize=(
        1 + 0.45 * (table.shape[1] - 1) * len(grouped),
        1.5 + 0.35 * len(arms)))
    for ax, pair in zip(axes[0], grouped):
      im = interference.plot_arms_heatmap(ax, table, pair)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.savefig(os.path.join(out_dir, "cosine_groups.png"), dpi=110,
                bbox_inches="tight")
    plt.close(fig)
  fig, axes = plt.subplots(1, len(pairs), squeeze=False,
                           figsize=(5 * len(pairs), 3.8))
  for ax, pair in zip(axes[0], pairs):
    interference.plot_arms_over_training(ax, dirs, pair)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "cosine_over_training.png"), dpi=110)
  plt.close(fig)
  full = interference.compare_arms(dirs)
  rows = [[f"`{a}`"] + [f"{full.loc[(a, p), 'global']:.4f}"
                        if (a, p) in full.index else "-" for p in pairs]
          for a in arms]
  summary = interference.arm_summary(dirs, since=0.5)
  detail = [[f"`{a}`", p, *("-" if np.isnan(s[k]) else f"{s[k]:.4f}" for k in (
      "cos", "null_a", "null_b", "debiased", "norm_ratio", "conflict")),
             s["lowest"]] for (a, p), s in summary.iterrows()]
  return [COSINE_SECTION, "", *unlogged,
          "From each run's logged interference statistics, its series "
          "(series.csv, which git keeps: every logged step, or every k-th "
          f"and the last when it logged more than {interference.SERIES_ROWS}"
          ")."
          + (" Per-group cosine between task gradients, mean over seeds and "
             "over the second half of training; one panel per task pair."
             if grouped else " No run logged per-group cosines."), "",
          *(["![per-group gradient cosine](cosine_groups.png)", ""]
            if grouped else []),
          "Over training (mean over seeds; rolling means over 20 logged "
          "steps of the series): the global cosine, the debiased cosine and "
          "the split-half null cosine (the noise floor) of each arm.", "",
          "![cosine over training](cosine_over_training.png)", "",
          "Mean global cosine over training (mean over seeds):", "",
          *_table(["arm"] + pairs, rows), "",
          "Second half of training, mean over seeds: the global cosine "
          "against its noise floor (the split-half cosine of each task with "
          "itself, a:a and b:b), the debiased cosine (minibatch noise removed "
          "from the norms, pieces averaged over those steps), the norm ratio, "
          "the fraction of steps with a negative cosine, and the three "
          "parameter groups of lowest cosine (seed 0).", "",
          *_table(["arm", "pair", "cos", "null a:a", "null b:b", "debiased",
                   "norm ratio", "steps cos<0", "lowest groups"], detail), ""]


RL_CHUNK = 20  # RL steps per row of the reward table
# rl/stage codes of the RL steps (r3jax/r3/tree_rl.py).
RL_STAGES = ((0, "root"), (1, "branch"), (2, "chain"))


def _rl_section(out_dir, dirs: Mapping[str, list[str]]) -> list[str]:
  """R3-RL over its steps, from each run's series (rl/*): the mean reward
  and V_strict of the root steps (drafts), of the branch steps (after
  reflect + refine) and of chain-mode steps, and the branch and chain
  steps' stop rate, per RL_CHUNK steps, mean over seeds; and a plot of the
  same."""
  curves = {}
  for arm, wds in dirs.items():
    frames = [s for s in (interference.series(wd) for wd in wds
                          if interference.has_series(wd))
              if "rl/stage" in s]
    if not frames:
      continue
    chunks = []
    for s in frames:
      chunk = (s.index.to_numpy() - 1) // RL_CHUNK
      parts = {}
      for stage, name in RL_STAGES:
        at = s["rl/stage"].to_numpy() == stage
        if not at.any():
          continue
        for key in ("rl/reward", "rl/v") + (
            ("rl/stop_rate",) if stage else ()):
          parts[f"{name} {key[3:]}"] = pd.Series(
              s[key].to_numpy()[at]).groupby(chunk[at]).mean()
      chunks.append(pd.DataFrame(parts))
    curves[arm] = sum(chunks) / len(chunks)
  if not curves:
    return []
  present = {c for curve in curves.values() for c in curve.columns}
  columns = [f"{name} {key}" for _, name in RL_STAGES
             for key in ("reward", "v", "stop_rate")
             if f"{name} {key}" in present]
  curves = {a: c.reindex(columns=columns) for a, c in curves.items()}
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
  for arm, c in curves.items():
    x = (c.index.to_numpy() + 1) * RL_CHUNK
    for ax, (key, label) in zip(axes, (("reward", "reward"), ("v", "V_strict"),
                                       ("stop_rate", "stop rate"))):
      for (_, name), style in zip(RL_STAGES, ("-", "--", ":")):
        col = f"{name} {key}"
        if col in c and c[col].notna().any():
          ax.plot(x, c[col], style, label=f"{arm} {name}")
      ax.set_xlabel("RL step")
      ax.set_title(label, fontsize=9)
  axes[0].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "rl_curves.png"), dpi=110)
  plt.close(fig)
  rows = [[f"`{arm}`", f"{i * RL_CHUNK + 1}-{(i + 1) * RL_CHUNK}"]
          + [f"{c.loc[i, k]:.3f}" if np.isfinite(c.loc[i, k]) else "-"
             for k in columns]
          for arm, c in curves.items() for i in c.index]
  return ["## R3-RL over its steps", "",
          "From each RL run's series (series.csv keeps every step of a run "
          f"of up to {interference.SERIES_ROWS}): root steps sample drafts "
          "(reward f (1 + V), V the draft's V_strict), branch steps reflect "
          "on buffered drafts and refine them (reward f (1 + D), D = V - "
          "V_prev, or 1 for a stop on a right draft; V the V_strict after "
          "the branch; r3jax/r3/rewards.py)"
          + ("; chain steps (rl.mode chain) sample drafts and one reflect + "
             "refine each, with one outcome reward f f' (1 + V_final) "
             "(chain v: V_strict after the branch)" if "chain reward" in
             columns else "") + ". Mean per "
          f"{RL_CHUNK} steps, then over seeds.", "",
          "![R3-RL curves](rl_curves.png)", "",
          *_table(["arm", "steps"] + columns, rows), ""]


def _rl_baseline_section(dirs: Mapping[str, list[str]],
                         bases: str | Sequence[str] | None) -> list[str]:
  """Each R3-RL arm's reward minus the rate-0 arm's of its mode (the start
  policy sampled on the same images with the same keys), seed by seed, over
  each half of the RL steps: root steps (the same prompts in both runs),
  branch steps (each run's own buffered drafts, drawn right at its own
  rl.perfect_ratio: an arm that draws them otherwise differs from rate 0 in
  its drafts too) and chain steps. The per-seed means are paired across
  seeds (steps within a run are not independent draws)."""
  bases = [b for b in ((bases,) if isinstance(bases, str) else bases or ())
           if b in dirs]
  if not bases:
    return []
  results = []
  for arm, wds in dirs.items():
    for wd in wds:
      if not interference.has_series(wd):
        continue
      s = interference.series(wd)
      if "rl/stage" not in s:
        continue
      steps, half = s.index.to_numpy(), int(s.index.max()) // 2
      stage, reward = s["rl/stage"].to_numpy(), s["rl/reward"].to_numpy()
      m = {}
      for code, name in RL_STAGES:
        for lo, hi in ((1, half), (half + 1, int(steps.max()))):
          at = (stage == code) & (steps >= lo) & (steps <= hi)
          if at.any():
            m[f"{name} reward, steps {lo}-{hi}"] = float(reward[at].mean())
      seed = int(os.path.basename(os.path.normpath(wd))[len("seed"):])
      results.append({"arm": arm, "seed": seed, "metrics": m})
  found, owner = {}, {}
  for base in bases:
    keys = list(dict.fromkeys(k for r in results if r["arm"] == base
                              for k in r["metrics"]))
    for k in keys:
      if owner.setdefault(k, base) != base:
        raise ValueError(f"rate-0 arms {owner[k]!r} and {base!r} both log "
                         f"{k!r}: one baseline per RL mode")
    found.update({(a, k): paired(results, a, base, k) for a in dirs
                  if a not in bases for k in keys})
  found = {c: v for c, v in found.items() if v is not None}
  if not found:
    return []
  named = " and ".join(f"`{b}`" for b in bases)
  text = (" ".join(_rl_baseline_section.__doc__.split()) + " The mean "
          f"difference from {named} (the rate-0 arm that logs the same "
          "stages) with its t-based 95% interval over "
          "seeds, the paired t-test's p and Holm's adjusted p over these "
          f"{len(found)} comparisons (apart from the study's family above); "
          f"* marks adjusted p < {ALPHA}.")
  return ["## R3-RL's reward against rate 0", "", text, "",
          *_holm_table(found), ""]


# The R3 loop's statistics by stage (r3jax/r3/loop.py), paired in the report.
STAGE_METRICS = (
    ("r3/round1/improved", "round 1 improved"),
    ("r3/round1/worse", "round 1 worse"),
    ("r3/false_stop", "false stop"),
    ("r3/over_edit", "over-edit"),
    ("r3/under_edit", "under-edit"),
    ("r3/reflect_right", "reflect right"),
    ("r3/reflect_helpful", "reflect helpful"),
    ("r3/refine_right", "refine right"),
    ("r3/refine_given_edit", "refine given the verifier's edit"))


def _stage_section(results, arms: Sequence[str], reference: str
                   ) -> list[str]:
  """Which stage of the loop changes: each arm with R3 scores minus the
  reference on STAGE_METRICS, paired over seeds."""
  labels = dict(STAGE_METRICS)
  found = {(a, k): v for a in arms if a != reference for k in labels
           if (v := paired(results, a, reference, k)) is not None}
  if not found:
    return []
  return ["## The loop's stages against the reference", "",
          f"Each arm minus `{reference}` on the loop's statistics by stage "
          "(test split, r3jax/r3/loop.py): round 1's improved and worse "
          "captions (V_frac, of all), false stops (per stop), over-edits "
          "(edits of a V_strict draft, per such reflection), under-edits "
          "(stops on a draft that is not V_strict, per such reflection; "
          "runs scored before it was logged have none), reflect right "
          "(the verifier's instruction or stop), reflect helpful (a stop on "
          "a V_strict draft, or an edit that raises the verifier's V_frac "
          "when applied as named), refine right (wrote the "
          "named edit, where it was right) and refine given the verifier's "
          "edit. Paired over the seeds both ran: mean difference, t-based "
          "95% interval, the paired t-test's p and Holm's adjusted p over "
          f"these {len(found)} comparisons (apart from the study's family "
          f"above); * marks adjusted p < {ALPHA}.", "",
          *_holm_table(found, labels.get), ""]


def _rounds_section(out_dir, results, arms) -> list[str]:
  f1 = rounds_lib.by_arm(results, "f1")
  if f1.empty:
    return []
  strict = rounds_lib.by_arm(results, "v_strict")
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, df, name in ((axes[0], f1, "caption F1"),
                       (axes[1], strict, "V_strict")):
    for a in df.index:
      ax.plot(df.columns, df.loc[a], marker="o", label=a)
    ax.set_xlabel("round (0 = draft)")
    ax.set_xticks(list(df.columns))
    ax.set_title(f"{name} by round")
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "rounds.png"), dpi=110)
  plt.close(fig)
  stats = summarize(results, [f"r3/{s}" for s in rounds_lib.LOOP_STATS])
  rows = [[f"`{a}`"] + [cell(stats[a].get(f"r3/{s}"), 3)
                        for s in rounds_lib.LOOP_STATS]
          for a in arms if a in f1.index]
  return ["## R3 accuracy by round", "",
          "The caption each example holds after round r (0 = draft), mean "
          "over seeds.", "", "![accuracy by round](rounds.png)", "",
          "Loop statistics (mean ± std over seeds): stop rate = examples "
          "that stopped; false stop = stops on a draft that was not "
          "V_strict, per stop; over-edit = edits of a V_strict draft, per "
          "such reflection; rounds = reflect rounds per example; reflect "
          "right = reflections that are the verifier's instruction (or stop) "
          "exactly; refine right = refines, of those told the verifier's "
          "edit (without reflect: of drafts needing one), that wrote the "
          "verifier's edited caption word for word (r3jax/r3/loop.py).", "",
          *_table(["arm", "stop rate", "false stop", "over-edit", "rounds",
                   "reflect right", "refine right"], rows), ""]


def _cost_section(out_dir, results, arms) -> list[str]:
  wall, total = wall_seconds(results)
  config = {}
  for r in results:  # one seed's resolved config per arm
    path = os.path.join(r["workdir"], "config.json")
    if r["arm"] not in config and os.path.exists(path):
      config[r["arm"]] = os.path.relpath(path, out_dir)
  rows = [[f"`{a}`", f"{wall[a]:.1f}" if a in wall else "-",
           f"[config.json]({config[a]})" if a in config else "-"]
          for a in arms]
  return ["## Wall time and configs", "",
          f"Study total: {total:.1f} s ({total / 3600:.2f} h) of wall time.",
          "", *_table(["arm", "wall s (mean over seeds)", "config"], rows), ""]


def _competence_section(results, start: str) -> list[str]:
  """The start arm's gate table (r3jax.analysis.competence), its metrics
  averaged over seeds: the competence at which the study's results hold."""
  runs = [r for r in results if r["arm"] == start]
  keys = sorted({k for r in runs for k in r["metrics"]})
  mean = {k: float(np.mean([r["metrics"][k] for r in runs]))
          for k in keys if all(k in r["metrics"] for r in runs)}
  n = competence.max_objects_of(runs[0]["workdir"])
  return ["## Competence of the start arm", "",
          f"`{start}`'s competence gates on the test split (mean over "
          f"{len(runs)} seed(s); r3jax/analysis/competence.py): the model "
          "the study's arms start from sees the world this well.", "",
          competence.table(mean, n), ""]


def exported_start(base: str) -> tuple[dict, str]:
  """(result.json, gate table) of an exported start (Study.base): the test
  metrics it records, against the gates of r3jax/analysis/competence.py."""
  with open(os.path.join(studies_lib.ROOT, base, "result.json")) as f:
    exported = json.load(f)
  return exported, competence.table(exported["metrics"],
                                    exported["max_objects"])


def _base_section(base: str) -> list[str]:
  """The gate table of a study's exported start (Study.base)."""
  exported, table = exported_start(base)
  return ["## Competence of the start", "",
          f"Every arm that does not continue another starts from `{base}` "
          f"({exported['run']} at step {exported['step']}). Its gates on the "
          "test split of the world it was trained on "
          "(r3jax/analysis/competence.py):", "", table, ""]


def insert_competence(root: str, study: str, start: str | None = None) -> str:
  """Puts the start arm's gate table (a section of collect's) into an
  existing RESULTS.md, before its change section, replacing an older one:
  for reports whose runs' logs are no longer here to collect them again."""
  start = start or studies_lib.get(study).start
  if not start:
    raise ValueError(f"study {study!r} has no start arm; name one")
  path = os.path.join(root, study, "RESULTS.md")
  with open(path) as f:
    text = f.read()
  section = "\n".join(_competence_section(load(root, study), start))
  head = "## Competence of the start arm"
  if head in text:
    start = text.index(head)
    end = text.index("\n## ", start + len(head)) + 1
    text = text[:start] + section + text[end:]
  else:
    at = text.index(f"## Change from `{start}`")
    text = text[:at] + section + "\n" + text[at:]
  with open(path, "w") as f:
    f.write(text)
  return path


def _head(root: str, study: str, known) -> list[str]:
  """The title, the study's doc and its reading (reading.md)."""
  lines = [f"# Study `{study}`", ""]
  if known:
    lines += [known.doc, ""]
  reading = os.path.join(root, study, "reading.md")
  if os.path.exists(reading):  # the written reading of these results
    with open(reading) as f:
      lines += [f.read().strip(), ""]
  return lines


def _statistics(results, known) -> tuple[list[str], dict, list[str], list]:
  """The sections computed from result.json alone: the main table, the
  start arm's competence, the change from it, the paired comparisons and
  the detail by question type; also (summary, arms, metrics) for the rest."""
  metrics = list(known.metrics if known else studies_lib.METRICS)
  found = {r["arm"] for r in results}
  arms = arm_order(results, known)
  reference = _reference(arms, known)
  summary = summarize(results, [k for k, _ in metrics])
  start = known.start if known and known.start in found else None
  family = _family(results, _compared(arms, known), reference, start,
                   metrics)
  lines = [
      f"Mean ± std (sample, ddof 1) over seeds; reference arm `{reference}`. "
      "\"vs reference\" lists the metrics on which the arm differs from the "
      "reference seed by seed: paired t-test, Holm-adjusted p < "
      f"{ALPHA} over the study's {len(family)} comparisons (Paired "
      "comparisons, below); it needs ≥ 2 shared seeds.", ""]
  seeds = {a: sorted(r["seed"] for r in results if r["arm"] == a) for a in arms}
  rows = []
  for a in arms:
    cells = [f"`{a}`", str(len(seeds[a]))]
    cells += [cell(summary[a].get(k), 1 if k.endswith("seconds") else 4)
              for k, _ in metrics]
    cells.append(_comparison(family, a, reference, metrics))
    rows.append(cells)
  lines += _table(["arm", "seeds"] + [label for _, label in metrics] +
                  ["vs reference"], rows) + [""]
  if known and known.base:
    lines += _base_section(known.base)
  if start:
    lines += _competence_section(results, start)
    lines += _change_section(results, start, arms, metrics, family)
  lines += _paired_section(family, reference, metrics)
  if known and known.loops:
    lines += _loop_section(results, known.loops)
  if known and known.base:
    lines += _understanding_section(results, _compared(arms, known),
                                    known.base)
  detail = summarize(results, [k for k, _ in DETAIL])
  rows = [[f"`{a}`"] + [cell(detail[a].get(k), 3) for k, _ in DETAIL]
          for a in arms if detail.get(a)]
  if rows:
    lines += ["## By question type and answer format", "",
              "VQA accuracy per question type; ITA answers that are \"yes\" "
              "and that are neither yes nor no; captions that parse into "
              "facts, and facts not in the scene (mean ± std over seeds).", "",
              *_table(["arm"] + [label for _, label in DETAIL], rows), ""]
  return lines, summary, arms, metrics


PLOT_SECTION = "## Caption F1 vs VQA accuracy"


def recollect_statistics(root: str, study: str) -> str:
  """Rewrites, in an existing RESULTS.md, the reading and every section
  computed from the committed result.json files (`_statistics`), keeping
  the sections that need the runs' logs (cosines, rounds, cost, ...): for
  reports whose logs are no longer here to `collect` them again."""
  path = os.path.join(root, study, "RESULTS.md")
  with open(path) as f:
    text = f.read()
  known = studies_lib.STUDIES.get(study)
  stats_lines = _statistics(load(root, study), known)[0]
  tail = text[text.index(PLOT_SECTION):]
  text = "\n".join(_head(root, study, known) + stats_lines) + tail
  with open(path, "w") as f:
    f.write(text)
  mark_unrebuildable(root, study)
  return path


def mark_unrebuildable(root: str, study: str) -> list[str]:
  """In an existing RESULTS.md, puts LOGS_GONE under the heading of each
  section computed from the runs' logs (LOG_SECTIONS) when some run of the
  study has neither metrics.jsonl nor series.csv, once; returns the
  headings of the sections marked (now or before)."""
  path = os.path.join(root, study, "RESULTS.md")
  if all(interference.has_series(r["workdir"]) for r in load(root, study)):
    return []
  with open(path) as f:
    text = f.read()
  marked = []
  for head in LOG_SECTIONS:
    if head + "\n" not in text:
      continue
    at = text.index(head + "\n") + len(head) + 1
    end = text.find("\n## ", at)
    if LOGS_GONE not in text[at:end if end >= 0 else len(text)]:
      text = text[:at] + "\n" + LOGS_GONE + "\n" + text[at:]
    marked.append(head)
  with open(path, "w") as f:
    f.write(text)
  return marked


def collect(root: str, study: str) -> str:
  """Writes <root>/<study>/RESULTS.md (and its PNGs) from the study's
  result.json files; returns the markdown's path."""
  results = load(root, study)
  if not results:
    raise ValueError(f"no result.json under {os.path.join(root, study)}")
  out_dir = os.path.join(root, study)
  known = studies_lib.STUDIES.get(study)
  stats_lines, summary, arms, metrics = _statistics(results, known)
  lines = _head(root, study, known) + stats_lines

  shown = plot(os.path.join(out_dir, "pareto.png"), summary, arms,
               f"{study}: caption F1 vs VQA accuracy")
  lines += [PLOT_SECTION, "",
            "One point per arm, error bars ± 1 std over seeds; the dashed "
            "line joins the arms no other arm beats on both.", "",
            "![caption F1 vs VQA accuracy](pareto.png)", ""]
  missing = [a for a in arms if a not in shown]
  if missing:
    lines += [f"Not plotted (a metric missing): {', '.join(missing)}.", ""]
  dirs = workdirs(results)
  for r in results:  # the series git keeps, made again from each log here
    interference.write_series(r["workdir"])
  lines += _cosine_section(out_dir, {a: dirs[a] for a in arms})
  lines += _rl_section(out_dir, {a: dirs[a] for a in arms})
  lines += _rl_baseline_section({a: dirs[a] for a in arms},
                                known.rl_baselines if known else None)
  lines += _rounds_section(out_dir, results, arms)
  lines += _stage_section(results, _compared(arms, known),
                          _reference(arms, known))
  lines += _cost_section(out_dir, results, arms)

  hw = sorted({(r["hardware"]["device_kind"], r["hardware"]["devices"],
                r["hardware"]["cpus"]) for r in results if "hardware" in r})
  lines += ["## Hardware", ""]
  lines += [f"- {kind} × {n} devices, {cpus} CPUs" for kind, n, cpus in hw]
  lines += ["", "## Commands", "",
            "Each run's `result.json` holds the command that reproduces it "
            "(run from the repository root):",
            "", "```"]
  lines += [r["command"] for r in results]
  lines += ["```", ""]
  path = os.path.join(out_dir, "RESULTS.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path
