"""The R3 loop by round (r3jax/r3/loop.py): a run's final per-round scores
from metrics.jsonl, the loop statistics, and the examples of its final
evaluation (r3_examples.jsonl) with their images."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from r3jax import config as config_lib
from r3jax.train import metrics as metrics_lib

ROUND_STATS = ("v_strict", "v_frac", "f1", "improved", "worse", "unchanged",
               "stop_rate")
LOOP_STATS = ("stopped_frac", "false_stop", "over_edit", "mean_rounds",
              "reflect_right", "refine_right")
_ROUND_KEY = re.compile(r"^r3/round(\d+)/(\w+)$")


def final_metrics(workdir: str) -> dict[str, float]:
  """The final evaluation's metrics (split prefix dropped): the last
  metrics.jsonl row with R3 round scores."""
  rows = [r for r in metrics_lib.read(workdir)
          if any(k.endswith("/r3/round0/f1") for k in r)]
  if not rows:
    raise ValueError(f"{workdir}/metrics.jsonl has no R3 round scores")
  return {k.split("/", 1)[1]: v for k, v in rows[-1].items() if "/" in k}


def scores(metrics: Mapping[str, float]) -> pd.DataFrame:
  """Round (index) x ROUND_STATS of r3/round{r}/... metrics (NaN where a
  round has no such statistic: round 0 has no improved/worse/stop_rate)."""
  rows: dict[int, dict[str, float]] = {}
  for k, v in metrics.items():
    m = _ROUND_KEY.match(k)
    if m and m.group(2) in ROUND_STATS:
      rows.setdefault(int(m.group(1)), {})[m.group(2)] = v
  df = pd.DataFrame.from_dict(rows, orient="index").sort_index()
  df.index.name = "round"
  return df.reindex(columns=[s for s in ROUND_STATS if s in df])


def loop_stats(metrics: Mapping[str, float]) -> dict[str, float]:
  return {s: metrics[f"r3/{s}"] for s in LOOP_STATS if f"r3/{s}" in metrics}


def has_rounds(metrics: Mapping[str, float]) -> bool:
  return "r3/round0/f1" in metrics


def by_arm(results: Sequence[Mapping], stat: str) -> pd.DataFrame:
  """Arm (rows) x round of the mean over seeds of r3/round{r}/<stat> (study
  results, r3jax.analysis.study.load); arms without round scores left out."""
  out = {}
  for arm in dict.fromkeys(r["arm"] for r in results):
    runs = [scores(r["metrics"]) for r in results
            if r["arm"] == arm and has_rounds(r["metrics"])]
    if runs:
      out[arm] = pd.concat([s[stat] for s in runs], axis=1).mean(axis=1)
  return pd.DataFrame(out).T


def _rows(workdir: str) -> list[dict[str, Any]]:
  with open(os.path.join(workdir, "r3_examples.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _world(workdir: str):
  """(config, data source) of the run, its dataset re-opened from
  config.json."""
  from r3jax.run import loop  # noqa: PLC0415 (builds TF datasets)
  config = config_lib.load_saved(os.path.join(workdir, "config.json"))
  return config, loop.load_source(config)


def examples(workdir: str, n: int | None = None) -> list[dict[str, Any]]:
  """The first n rows of the run's r3_examples.jsonl (all by default), each
  with its record's "image" (and "reference", its first reference caption)
  from the run's dataset, re-opened from its config.json."""
  rows = _rows(workdir)
  rows = rows[:n] if n is not None else rows
  if not rows:
    return rows
  config, world = _world(workdir)
  records = world.records(config.final_eval.split,
                          max(r["index"] for r in rows) + 1)
  for r in rows:
    rec = records[r["index"]]
    r["image"] = np.asarray(rec["image"])
    r["reference"] = _text(rec["captions"][0])
  return rows


def rescore(workdir: str) -> dict[str, float]:
  """The loop's scores computed again from the run's saved examples
  (r3_examples.jsonl, the whole final evaluation) by r3jax.r3.loop.Scorer,
  the code that scores a live run: a statistic added after a run was made
  can be read off its examples. Token counts and times are not saved (0)."""
  from r3jax.r3 import loop as r3_loop  # noqa: PLC0415 (imports jax)
  from r3jax.run import source  # noqa: PLC0415
  rows = _rows(workdir)
  config, world = _world(workdir)
  if [r["index"] for r in rows] != list(range(len(rows))):
    raise ValueError(f"{workdir}/r3_examples.jsonl is not a whole evaluation "
                     "(its rows are not examples 0..n-1)")
  records = world.records(config.final_eval.split, len(rows))
  scorer = r3_loop.Scorer(
      world.world if config.data.source == "world" else None,
      config.r3.rounds, source.r3_direct(config))
  return scorer.scores(r3_loop.trajectories(rows), records)


def _text(x) -> str:
  return x.decode() if isinstance(x, bytes) else str(x)


def plot_scores(ax, df: pd.DataFrame, stats=("f1", "v_strict", "v_frac"),
                label: str = ""):
  for s in stats:
    ax.plot(df.index, df[s], marker="o", label=f"{label} {s}".strip())
  ax.set_xlabel("round (0 = draft)")
  ax.set_xticks(df.index)
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")


def plot_examples(rows: Sequence[Mapping[str, Any]], wrap: int = 60):
  """A figure: one row per example, its image and the draft, each round's
  instruction and refined caption with the verifier's V_frac."""
  import textwrap  # noqa: PLC0415

  import matplotlib.pyplot as plt  # noqa: PLC0415
  fig, axes = plt.subplots(len(rows), 2, figsize=(12, 2.6 * len(rows)),
                           squeeze=False,
                           gridspec_kw={"width_ratios": [1, 5]})
  for (ax_img, ax_txt), r in zip(axes, rows):
    ax_img.imshow(r["image"])
    ax_img.set_title(f"test #{r['index']}", fontsize=8)
    ax_img.axis("off")
    lines = [f"reference: {r['reference']}"] if "reference" in r else []
    lines += [f"draft (V_frac {r['v_frac'][0]:.2f}): {r['captions'][0]}"]
    for k, refl in enumerate(r["reflections"], start=1):
      lines.append(f"round {k} reflect: {refl}")
      if k < len(r["captions"]) and not (r["stopped"] and
                                         k == len(r["reflections"])):
        lines.append(f"round {k} refined (V_frac {r['v_frac'][k]:.2f}): "
                     f"{r['captions'][k]}")
    text = "\n".join(textwrap.fill(x, wrap * 2, subsequent_indent="    ")
                     for x in lines)
    ax_txt.text(0, 1, text, va="top", ha="left", fontsize=7,
                family="monospace", transform=ax_txt.transAxes)
    ax_txt.axis("off")
  fig.tight_layout()
  return fig
