"""RESULTS.md for a study: mean +- std over seeds per arm, a comparison with
the reference arm, the hardware and a caption-F1 vs VQA-accuracy plot.

  from experiments import report
  report.collect("experiments", "mitigation")   # -> path of RESULTS.md

An arm "differs" from the reference on a metric when the difference of the
means exceeds two standard errors of that difference (Welch):
|m_a - m_r| > 2 * sqrt(s_a^2 / n_a + s_r^2 / n_r), s the sample std (ddof 1).
That needs two seeds on both sides; with fewer the column says n/a.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments import studies as studies_lib

PLOT_X, PLOT_Y = "caption/f1", "vqa/accuracy"


def load(root: str, study: str) -> list[dict[str, Any]]:
  """Every result.json of the study, sorted by arm and seed."""
  paths = glob.glob(os.path.join(root, study, "runs", "*", "seed*",
                                 "result.json"))
  out = []
  for p in paths:
    with open(p) as f:
      out.append(json.load(f))
  return sorted(out, key=lambda r: (r["arm"], r["seed"]))


def summarize(results: Sequence[Mapping], keys: Sequence[str]
              ) -> dict[str, dict[str, tuple[float, float, int]]]:
  """arm -> metric -> (mean, sample std (nan for one seed), seeds)."""
  by_arm: dict[str, list[Mapping]] = {}
  for r in results:
    by_arm.setdefault(r["arm"], []).append(r)
  out = {}
  for arm, rs in by_arm.items():
    out[arm] = {}
    for k in keys:
      xs = np.array([r["metrics"][k] for r in rs if k in r["metrics"]])
      if len(xs):
        std = float(np.std(xs, ddof=1)) if len(xs) > 1 else math.nan
        out[arm][k] = (float(np.mean(xs)), std, len(xs))
  return out


def differs(a: tuple[float, float, int], ref: tuple[float, float, int]
            ) -> bool | None:
  """Whether two (mean, std, n) differ by more than seed noise; None when
  either side has fewer than two seeds."""
  (ma, sa, na), (mr, sr, nr) = a, ref
  if na < 2 or nr < 2:
    return None
  return abs(ma - mr) > 2 * math.sqrt(sa ** 2 / na + sr ** 2 / nr)


def _fmt(stat: tuple[float, float, int] | None, digits: int = 4) -> str:
  if stat is None:
    return "-"
  mean, std, _ = stat
  return f"{mean:.{digits}f}" if math.isnan(std) else (
      f"{mean:.{digits}f} ± {std:.{digits}f}")


def _comparison(stats, ref_stats, metrics, is_ref: bool) -> str:
  if is_ref:
    return "reference"
  if ref_stats is None:
    return "n/a (no reference runs)"
  found, unknown = [], False
  for k, label in metrics:
    if k == "train_seconds" or k not in stats or k not in ref_stats:
      continue
    d = differs(stats[k], ref_stats[k])
    if d is None:
      unknown = True
    elif d:
      sign = "+" if stats[k][0] > ref_stats[k][0] else "−"
      found.append(f"{label} {sign}")
  if found:
    return ", ".join(found)
  return "n/a (1 seed)" if unknown else "no"


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
  """The arms no other arm beats on both axes (higher is better)."""
  return [a for a, (x, y) in points.items() if not any(
      (x2 >= x and y2 >= y and (x2, y2) != (x, y))
      for b, (x2, y2) in points.items() if b != a)]


def plot(path: str, summary, arms: Sequence[str], title: str) -> list[str]:
  """Caption F1 vs VQA accuracy, one point per arm with std error bars;
  returns the arms plotted (those with both metrics)."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  shown = [a for a in arms if PLOT_X in summary.get(a, {}) and
           PLOT_Y in summary.get(a, {})]
  fig, ax = plt.subplots(figsize=(6, 4.5))
  err = lambda s: 0.0 if math.isnan(s[1]) else s[1]
  for a in shown:
    x, y = summary[a][PLOT_X], summary[a][PLOT_Y]
    ax.errorbar(x[0], y[0], xerr=err(x), yerr=err(y), fmt="o", capsize=3)
    ax.annotate(a, (x[0], y[0]), textcoords="offset points", xytext=(4, 4),
                fontsize=8)
  front = pareto_front({a: (summary[a][PLOT_X][0], summary[a][PLOT_Y][0])
                        for a in shown})
  if len(front) > 1:
    xy = sorted((summary[a][PLOT_X][0], summary[a][PLOT_Y][0]) for a in front)
    ax.plot(*zip(*xy), "--", color="gray", lw=1, label="Pareto front")
    ax.legend(loc="best", fontsize=8)
  ax.set_xlabel("caption fact F1")
  ax.set_ylabel("VQA accuracy")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return shown


def collect(root: str, study: str) -> str:
  """Writes <root>/<study>/RESULTS.md (and pareto.png) from the study's
  result.json files; returns the markdown's path."""
  results = load(root, study)
  if not results:
    raise ValueError(f"no result.json under {os.path.join(root, study)}")
  known = studies_lib.STUDIES.get(study)
  metrics = list(known.metrics if known else studies_lib.METRICS)
  found = {r["arm"] for r in results}
  arms = ([a.name for a in known.arms if a.name in found] if known else [])
  arms += sorted(found - set(arms))
  reference = known.reference if known else arms[0]
  summary = summarize(results, [k for k, _ in metrics])
  ref_stats = summary.get(reference)

  lines = [f"# Study `{study}`", ""]
  if known:
    lines += [known.doc, ""]
  lines += [
      f"Mean ± std (sample, ddof 1) over seeds; reference arm `{reference}`. "
      "\"vs reference\" lists the metrics whose mean differs from the "
      "reference's by more than 2 standard errors of the difference "
      "(|Δ| > 2·sqrt(s_a²/n_a + s_r²/n_r)); it needs ≥ 2 seeds per arm.", ""]
  head = ["arm", "seeds"] + [label for _, label in metrics] + ["vs reference"]
  lines += ["| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] * len(head)) + "|"]
  seeds = {a: sorted(r["seed"] for r in results if r["arm"] == a) for a in arms}
  for a in arms:
    cells = [f"`{a}`", str(len(seeds[a]))]
    cells += [_fmt(summary[a].get(k), 1 if k.endswith("seconds") else 4)
              for k, _ in metrics]
    cells.append(_comparison(summary[a], ref_stats, metrics, a == reference))
    lines.append("| " + " | ".join(cells) + " |")

  png = os.path.join(root, study, "pareto.png")
  shown = plot(png, summary, arms, f"{study}: caption F1 vs VQA accuracy")
  lines += ["", "## Caption F1 vs VQA accuracy", "",
            "One point per arm, error bars ± 1 std over seeds; the dashed "
            "line joins the arms no other arm beats on both.", "",
            "![caption F1 vs VQA accuracy](pareto.png)", ""]
  missing = [a for a in arms if a not in shown]
  if missing:
    lines += [f"Not plotted (a metric missing): {', '.join(missing)}.", ""]

  hw = sorted({(r["hardware"]["device_kind"], r["hardware"]["devices"],
                r["hardware"]["cpus"]) for r in results if "hardware" in r})
  lines += ["## Hardware", ""]
  lines += [f"- {kind} × {n} devices, {cpus} CPUs" for kind, n, cpus in hw]
  lines += ["", "## Commands", "",
            "Each run's `result.json` holds the command that reproduces it:",
            "", "```"]
  lines += [r["command"] for r in results]
  lines += ["```", ""]
  path = os.path.join(root, study, "RESULTS.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path
