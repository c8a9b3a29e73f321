"""A study's results (the result.json of each arm and seed, written by
experiments/run.py under <root>/<study>/runs/<arm>/seed<k>/): loading,
mean +- std over seeds, change from the start arm, seed-noise comparisons
and the caption-F1 vs VQA-accuracy Pareto front.

An arm "differs" from another on a metric when the difference of the means
exceeds two standard errors of that difference (Welch):
|m_a - m_r| > 2 * sqrt(s_a^2 / n_a + s_r^2 / n_r), s the sample std (ddof 1).
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

PLOT_X, PLOT_Y = "caption/f1", "vqa/accuracy"
Stat = tuple[float, float, int]  # mean, sample std (nan for one seed), n


def load(root: str, study: str) -> list[dict[str, Any]]:
  """Every result.json of the study, sorted by arm and seed; each gets its
  run's directory as "workdir"."""
  paths = glob.glob(os.path.join(root, study, "runs", "*", "seed*",
                                 "result.json"))
  out = []
  for p in paths:
    with open(p) as f:
      out.append({**json.load(f), "workdir": os.path.dirname(p)})
  return sorted(out, key=lambda r: (r["arm"], r["seed"]))


def arms(results: Sequence[Mapping], study=None) -> list[str]:
  """Arm names in registry order (those not registered last, sorted)."""
  found = {r["arm"] for r in results}
  out = [a.name for a in study.arms if a.name in found] if study else []
  return out + sorted(found - set(out))


def workdirs(results: Sequence[Mapping]) -> dict[str, list[str]]:
  """arm -> its runs' directories, by seed."""
  out: dict[str, list[str]] = {}
  for r in results:
    out.setdefault(r["arm"], []).append(r["workdir"])
  return out


def _stat(xs) -> Stat:
  xs = np.asarray(xs, float)
  std = float(np.std(xs, ddof=1)) if len(xs) > 1 else math.nan
  return float(np.mean(xs)), std, len(xs)


def summarize(results: Sequence[Mapping], keys: Sequence[str]
              ) -> dict[str, dict[str, Stat]]:
  """arm -> metric -> (mean, sample std (nan for one seed), seeds)."""
  by_arm: dict[str, list[Mapping]] = {}
  for r in results:
    by_arm.setdefault(r["arm"], []).append(r)
  out = {}
  for arm, rs in by_arm.items():
    out[arm] = {}
    for k in keys:
      xs = [r["metrics"][k] for r in rs if k in r["metrics"]]
      if xs:
        out[arm][k] = _stat(xs)
  return out


def changes(results: Sequence[Mapping], start: str, keys: Sequence[str]
            ) -> dict[str, dict[str, Stat]]:
  """arm -> metric -> (mean, std, n) over seeds of the per-seed difference
  arm - start (seeds the start arm also ran); the start arm left out."""
  base = {r["seed"]: r["metrics"] for r in results if r["arm"] == start}
  by_arm: dict[str, dict[str, list[float]]] = {}
  for r in results:
    if r["arm"] == start or r["seed"] not in base:
      continue
    d = by_arm.setdefault(r["arm"], {})
    for k in keys:
      if k in r["metrics"] and k in base[r["seed"]]:
        d.setdefault(k, []).append(r["metrics"][k] - base[r["seed"]][k])
  return {a: {k: _stat(xs) for k, xs in d.items()} for a, d in by_arm.items()}


Paired = tuple[float, float, float, float, int]  # mean, lo, hi, p, n


def paired(results: Sequence[Mapping], arm: str, ref: str, key: str,
           ref_key: str | None = None) -> Paired | None:
  """`arm`'s `key` - `ref`'s `ref_key` (default `key`) over the seeds both
  ran (arms of one seed share its start; `ref` may be `arm` itself, e.g.
  the loop's captions against its own drafts): the mean paired difference,
  its t-based 95% interval and the two-sided p-value of the paired t-test
  (df = n - 1); None with fewer than 2 shared seeds. Where the difference
  is the same in every seed the t statistic is undefined: p is then 1 for
  no difference, else the exact two-sided sign test's 2 / 2^n (all n
  differences of one sign), and the interval is the point (lo == hi)."""
  from scipy import stats  # noqa: PLC0415
  ref_key = ref_key or key
  a = {r["seed"]: r["metrics"][key] for r in results
       if r["arm"] == arm and key in r["metrics"]}
  b = {r["seed"]: r["metrics"][ref_key] for r in results
       if r["arm"] == ref and ref_key in r["metrics"]}
  d = np.array([a[s] - b[s] for s in sorted(set(a) & set(b))], float)
  n = len(d)
  if n < 2:
    return None
  mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(n))
  if np.ptp(d) <= 1e-12 * max(1.0, abs(mean)):  # equal but for rounding
    p = 1.0 if mean == 0.0 else min(1.0, 2.0 ** (1 - n))
    return mean, mean, mean, p, n
  half = float(stats.t.ppf(0.975, n - 1)) * se
  p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
  return mean, mean - half, mean + half, p, n


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict[str, float]:
  """Two models' right (True) / wrong answers to the same questions, in the
  same order: the accuracy difference a - b and the exact two-sided
  McNemar p-value (a binomial test of the questions only a got right
  against those only b got right, at 1/2; 1 when there are none)."""
  from scipy import stats  # noqa: PLC0415
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  if a.shape != b.shape or a.ndim != 1 or not len(a):
    raise ValueError(f"mcnemar needs two equally long, non-empty answer "
                     f"lists, got {a.shape} and {b.shape}")
  only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
  p = (float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)
       if only_a + only_b else 1.0)
  return {"n": len(a), "a": float(a.mean()), "b": float(b.mean()),
          "diff": float(a.mean() - b.mean()), "only_a": only_a,
          "only_b": only_b, "p": p}


def binomial(k: int, n: int, rate: float) -> float:
  """Exact two-sided p-value of k right of n against a fixed rate (chance,
  or a constant answer's accuracy)."""
  from scipy import stats  # noqa: PLC0415
  return float(stats.binomtest(k, n, rate).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm-Bonferroni adjusted p-values, in the input's order: the k-th
  smallest of m is multiplied by (m - k + 1), made monotone, capped at 1.
  Rejecting where the adjusted p < alpha controls the family-wise error
  at alpha over the m comparisons."""
  m = len(pvalues)
  order = sorted(range(m), key=lambda i: pvalues[i])
  out, running = [0.0] * m, 0.0
  for k, i in enumerate(order):
    running = max(running, min(1.0, (m - k) * pvalues[i]))
    out[i] = running
  return out


def _frame(stats: Mapping[str, Mapping[str, Stat]], order: Sequence[str],
           keys: Sequence[str]) -> pd.DataFrame:
  cols = pd.MultiIndex.from_product([keys, ["mean", "std", "n"]],
                                    names=["metric", "stat"])
  rows = [[v for k in keys for v in stats[a].get(k, (math.nan,) * 3)]
          for a in order if a in stats]
  return pd.DataFrame(rows, index=pd.Index([a for a in order if a in stats],
                                           name="arm"), columns=cols)


def _keys(results: Sequence[Mapping], metrics: Sequence[str] | None):
  if metrics is not None:
    return list(metrics)
  return sorted({k for r in results for k in r["metrics"]})


def table(root: str, study: str, metrics: Sequence[str] | None = None,
          spec=None) -> pd.DataFrame:
  """arm x (metric, mean/std/n) over seeds; default every metric found.
  `spec`, the study's registry entry (experiments.studies.STUDIES[study]),
  orders the arms."""
  results = load(root, study)
  keys = _keys(results, metrics)
  return _frame(summarize(results, keys), arms(results, spec), keys)


def change_table(root: str, study: str, start: str | None = None,
                 metrics: Sequence[str] | None = None, spec=None
                 ) -> pd.DataFrame:
  """arm x (metric, mean/std/n) of the change from the start arm (default:
  the `start` of `spec`, the study's registry entry), as `changes`."""
  results = load(root, study)
  start = start or getattr(spec, "start", None)
  if start is None:
    raise ValueError(f"study {study!r} has no start arm; pass start= (or "
                     "spec=, its registry entry)")
  keys = _keys(results, metrics)
  return _frame(changes(results, start, keys), arms(results, spec), keys)


def cell(stat: Stat | None, digits: int = 4, signed: bool = False) -> str:
  """(mean, std, n) as "mean ± std" ("-" when missing, no std with one
  seed)."""
  if stat is None or math.isnan(stat[0]):
    return "-"
  mean, std, _ = stat
  f = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
  return f if math.isnan(std) else f"{f} ± {std:.{digits}f}"


def formatted(df: pd.DataFrame, digits: int = 4, signed: bool = False
              ) -> pd.DataFrame:
  """A table / change_table as "mean ± std" strings (`cell`), one column
  per metric."""
  keys = list(dict.fromkeys(df.columns.get_level_values("metric")))
  return pd.DataFrame({k: [cell((m, s, 0), digits, signed) for m, s in zip(
      df[(k, "mean")], df[(k, "std")])] for k in keys}, index=df.index)


def wall_seconds(results: Sequence[Mapping]) -> tuple[dict[str, float], float]:
  """(arm -> mean wall seconds over seeds, the study's total)."""
  by_arm: dict[str, list[float]] = {}
  for r in results:
    if "wall_seconds" in r:
      by_arm.setdefault(r["arm"], []).append(r["wall_seconds"])
  return ({a: float(np.mean(xs)) for a, xs in by_arm.items()},
          float(sum(sum(xs) for xs in by_arm.values())))


def beyond_noise(change: Stat) -> bool:
  """Whether a mean per-seed change is larger than two standard errors of
  its mean (|mean| > 2 std / sqrt(n)); False with fewer than two seeds."""
  mean, std, n = change
  return n >= 2 and abs(mean) > 2 * std / math.sqrt(n)


def differs(a: Stat, ref: Stat) -> bool | None:
  """Whether two (mean, std, n) differ by more than seed noise; None when
  either side has fewer than two seeds."""
  (ma, sa, na), (mr, sr, nr) = a, ref
  if na < 2 or nr < 2:
    return None
  return abs(ma - mr) > 2 * math.sqrt(sa ** 2 / na + sr ** 2 / nr)


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
  """The arms no other arm beats on both axes (higher is better)."""
  return [a for a, (x, y) in points.items() if not any(
      (x2 >= x and y2 >= y and (x2, y2) != (x, y))
      for b, (x2, y2) in points.items() if b != a)]


def plot_pareto(ax, summary: Mapping[str, Mapping[str, Stat]],
                order: Sequence[str]) -> list[str]:
  """Caption F1 vs VQA accuracy, one point per arm with std error bars and
  the Pareto front dashed; returns the arms plotted (those with both)."""
  shown = [a for a in order if PLOT_X in summary.get(a, {}) and
           PLOT_Y in summary.get(a, {})]
  err = lambda s: 0.0 if math.isnan(s[1]) else s[1]  # noqa: E731
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
  ax.grid(alpha=0.3)
  return shown
