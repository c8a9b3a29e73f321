"""Reading and plotting interference measurements: for one run per-group
cosine heatmaps, the global cosine against its noise floor, norm ratios and
the applied task weights; across arms (seeds averaged) the global cosine over
training and per-group mean cosines.

Keys written by the instrumented step (r3jax/interference/step.py):
  interf/<stat>/<a>:<b>            global pair statistics (cos, magsim, ...)
  interf/null_cos/<task>, interf/null_dot/<task>, interf/dot/<a>:<b>
  group/<group>/<stat>/<a>:<b>     the same per parameter group
  weights/<task>                   task weights actually applied

A run's series (`series`): the keys the study report reads (and the applied
task weights) of its training rows, every row up to SERIES_ROWS rows, else an
even subsample that keeps the first and last (of each R3-RL stage apart, so
that alternating root and branch steps both stay). The runner writes it to
<workdir>/series.csv, which git keeps where it does not keep metrics.jsonl;
the across-arm functions below (compare_arms, arm_summary, arm_series, ...)
read the series, from metrics.jsonl when it is there and from series.csv
when not, so that a report made in a fresh clone is the one made with the
logs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from r3jax.train import metrics as metrics_lib

_GROUP_KEY = re.compile(r"^group/(.+)/([^/]+)/([^/]+)$")


def load(workdir: str) -> pd.DataFrame:
  """Training rows of metrics.jsonl, one row per step (eval rows dropped).
  The run's parameter-group order (interference.json) rides in df.attrs."""
  rows = [r for r in metrics_lib.read(workdir) if "loss" in r]
  if not rows:
    raise ValueError(f"{workdir}/metrics.jsonl has no training rows")
  df = pd.DataFrame(rows).groupby("step").last().sort_index()
  meta = os.path.join(workdir, "interference.json")
  if os.path.exists(meta):
    with open(meta) as f:
      df.attrs["groups"] = json.load(f)["groups"]
  return df


SERIES_FILE = "series.csv"
SERIES_ROWS = 200  # at most this many rows in a run's series
# The training-row keys of a run's series: those the study report reads (the
# global cosine, the split-half pieces, the norm ratio, per-group cosines),
# the applied task weights, and R3-RL's per-step stage, reward, V_strict and
# stop rate (r3jax/r3/tree_rl.py).
_SERIES_KEY = re.compile(r"^interf/(cos|dot|norm_ratio|null_cos|null_dot)/"
                         r"[^/]+$|^weights/[^/]+$|"
                         r"^rl/(stage|reward|v|v_prev|stop_rate)$")


def subsample(n: int, rows: int | None = None) -> list[int]:
  """Positions of the rows kept of `n`: all when n <= rows (default
  SERIES_ROWS, at least 2), else every k-th from the first and the last,
  k the smallest stride that keeps at most `rows`."""
  rows = max(SERIES_ROWS if rows is None else rows, 2)
  stride = max(math.ceil(n / rows), 1)
  while math.ceil(n / stride) + bool((n - 1) % stride) > rows:
    stride += 1
  kept = list(range(0, n, stride))
  return kept if not n or kept[-1] == n - 1 else kept + [n - 1]


def _kept_rows(df: pd.DataFrame) -> np.ndarray:
  """`subsample`'s positions; in an R3-RL run (rl/stage), of each stage's
  rows apart, an equal share of SERIES_ROWS each: every k-th of alternating
  root and branch steps would keep one stage only when k is even."""
  if "rl/stage" not in df:
    return np.asarray(subsample(len(df)), int)
  stage = df["rl/stage"].fillna(-1.0).to_numpy(float)
  codes = np.unique(stage)
  share = max(SERIES_ROWS // len(codes), 2)
  at = [np.flatnonzero(stage == c)[subsample(int((stage == c).sum()), share)]
        for c in codes]
  return np.sort(np.concatenate(at))


def series_of(df: pd.DataFrame) -> pd.DataFrame:
  """The series of a run's training rows (`load`): its global interference
  keys and task weights in logged order, then the per-group cosines in the
  run's group order (so that `groups` reads that order off the columns),
  subsampled (`_kept_rows`). No attrs: series.csv has none."""
  keys = [k for k in df if _SERIES_KEY.match(k)]
  cos = {}
  for k in df:
    m = _GROUP_KEY.match(k)
    if m and m.group(2) == "cos":
      cos.setdefault(m.group(1), []).append(k)
  keys += [k for g in groups(df) for k in cos[g]]
  at = _kept_rows(df)
  return pd.DataFrame({k: df[k].to_numpy(float)[at] for k in keys},
                      index=pd.Index(df.index.to_numpy()[at], name="step"))


def _float32(values: np.ndarray) -> bool:
  """Whether every value is a float32 widened (what the step logs)."""
  return bool(np.array_equal(values.astype(np.float32).astype(float), values,
                             equal_nan=True))


def write_series(workdir: str) -> str | None:
  """Writes the run's series (`series_of` its metrics.jsonl) to
  <workdir>/series.csv; returns its path (None without training rows).
  Values round-trip exactly: the shortest float32 text when every value is
  a float32 (the first line says which), else the shortest float64 text;
  an empty cell is NaN."""
  try:
    df = series_of(load(workdir))
  except (FileNotFoundError, ValueError):  # no log, or no training rows
    return None
  values = df.to_numpy(float)
  single = _float32(values)
  text = (lambda v: str(np.float32(v))) if single else repr  # noqa: E731
  path = os.path.join(workdir, SERIES_FILE)
  with open(path + ".tmp", "w", newline="") as f:
    f.write(f"# training rows of metrics.jsonl: {len(df)} kept; values "
            f"{'float32' if single else 'float64'}\n")
    out = csv.writer(f, lineterminator="\n")
    out.writerow(["step", *df.columns])
    for step, row in zip(df.index, values):
      out.writerow([int(step), *("" if math.isnan(v) else text(float(v))
                                 for v in row)])
  os.replace(path + ".tmp", path)
  return path


def read_series(path: str) -> pd.DataFrame:
  """A series.csv (`write_series`) as the frame `series_of` made."""
  with open(path, newline="") as f:
    first = f.readline()
    rows = list(csv.reader(f))
  single = "float32" in first
  head, body = rows[0], rows[1:]
  parse = (lambda t: float(np.float32(t))) if single else float  # noqa: E731
  steps = [int(r[0]) for r in body]
  return pd.DataFrame(
      {k: np.array([math.nan if r[i] == "" else parse(r[i]) for r in body],
                   float) for i, k in enumerate(head[1:], 1)},
      index=pd.Index(np.array(steps, dtype=np.int64), name="step"))


def has_series(workdir: str) -> bool:
  """Whether the run's series can be read: metrics.jsonl or series.csv."""
  return any(os.path.exists(os.path.join(workdir, f))
             for f in ("metrics.jsonl", SERIES_FILE))


def series(workdir: str) -> pd.DataFrame:
  """The run's series: from metrics.jsonl when it is there (`series_of`),
  else from series.csv, which is the same frame."""
  if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    return series_of(load(workdir))
  return read_series(os.path.join(workdir, SERIES_FILE))


def pairs(df: pd.DataFrame) -> list[str]:
  return sorted(k.split("/")[-1] for k in df if k.startswith("interf/cos/"))


def groups(df: pd.DataFrame) -> list[str]:
  """Group names in the run's forward order (logged order if unknown)."""
  seen = {}
  for k in df:
    m = _GROUP_KEY.match(k)
    if m and m.group(2) == "cos":
      seen.setdefault(m.group(1), None)
  order = [g for g in df.attrs.get("groups", ()) if g in seen]
  return order + [g for g in seen if g not in order]


def group_matrix(df: pd.DataFrame, pair: str, stat: str = "cos"
                 ) -> tuple[list[str], np.ndarray, np.ndarray]:
  """(groups, steps, values G x S) of one per-group statistic."""
  names = groups(df)
  values = np.stack([df[f"group/{g}/{stat}/{pair}"].to_numpy() for g in names])
  return names, df.index.to_numpy(), values


def debiased_cosine(df: pd.DataFrame, pair: str, window: int = 10) -> pd.Series:
  """Noise-debiased cosine over a sliding window: the unbiased pieces are
  averaged before dividing, mean<g_a, g_b> / sqrt(mean<g_aa', g_ab'> *
  mean<g_ba', g_bb'>); NaN where a noise-free norm estimate is not positive."""
  a, b = pair.split(":")
  roll = lambda k: df[k].rolling(window, min_periods=1).mean()  # noqa: E731
  den = roll(f"interf/null_dot/{a}") * roll(f"interf/null_dot/{b}")
  out = roll(f"interf/dot/{pair}") / np.sqrt(den.where(den > 0))
  return out.clip(-1, 1)


def plot_group_heatmap(ax, df: pd.DataFrame, pair: str, stat: str = "cos"):
  names, steps, values = group_matrix(df, pair, stat)
  im = ax.imshow(values, aspect="auto", cmap="RdBu", vmin=-1, vmax=1,
                 interpolation="nearest",
                 extent=(steps[0], steps[-1], len(names) - 0.5, -0.5))
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel("step")
  ax.set_title(f"per-group {stat} {pair}")
  return im


def plot_cosine_vs_null(ax, df: pd.DataFrame, pair: str, window: int = 10):
  """Raw global cosine, the same-task split-half cosines (the level two
  samples of one objective agree to) and the windowed debiased cosine."""
  steps = df.index
  ax.plot(steps, df[f"interf/cos/{pair}"], lw=1, label=f"cos {pair}")
  for task in pair.split(":"):
    key = f"interf/null_cos/{task}"
    if key in df:
      ax.plot(steps, df[key], lw=1, ls="--", label=f"null (split-half) {task}")
  if f"interf/dot/{pair}" in df:
    ax.plot(steps, debiased_cosine(df, pair, window), lw=2,
            label=f"debiased (window {window})")
  ax.axhline(0, color="k", lw=0.5)
  ax.set_xlabel("step")
  ax.legend(fontsize="small")


def plot_norm_ratios(ax, df: pd.DataFrame):
  for pair in pairs(df):
    ax.plot(df.index, df[f"interf/norm_ratio/{pair}"], label=pair)
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_title("gradient norm ratio |g_a| / |g_b|")
  ax.legend(fontsize="small")


def plot_weights(ax, df: pd.DataFrame):
  for k in sorted(k for k in df if k.startswith("weights/")):
    ax.plot(df.index, df[k], label=k.split("/", 1)[1])
  ax.set_xlabel("step")
  ax.set_title("applied task weights")
  ax.legend(fontsize="small")


def conflict_table(df: pd.DataFrame) -> pd.DataFrame:
  """Per group and pair: mean cosine, mean contribution to the global cosine
  and the fraction of steps below each logged conflict threshold; the "global"
  rows carry the split-half null cosine for comparison."""
  rows = []
  for pair in pairs(df):
    entries = [("global", f"interf/{{}}/{pair}")] + [
        (g, f"group/{g}/{{}}/{pair}") for g in groups(df)]
    for name, key in entries:
      row = {"group": name, "pair": pair,
             "mean_cos": df[key.format("cos")].mean()}
      if key.format("contrib") in df:
        row["mean_contrib"] = df[key.format("contrib")].mean()
      prefix, suffix = key.split("{}")
      for k in df:
        if k.startswith(prefix + "conflict@") and k.endswith(suffix):
          row[k[len(prefix):-len(suffix)]] = df[k].mean()
      if name == "global":
        for task in pair.split(":"):
          if f"interf/null_cos/{task}" in df:
            row[f"null_cos_{task}"] = df[f"interf/null_cos/{task}"].mean()
      rows.append(row)
  return pd.DataFrame(rows).set_index(["pair", "group"])


def has_interference(workdir: str) -> bool:
  """Whether the run's metrics.jsonl holds interference statistics (its
  series.csv when the log is not there)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    path = os.path.join(workdir, SERIES_FILE)
    if not os.path.exists(path):
      return False
    with open(path) as f:
      f.readline()
      return any(k.startswith("interf/cos/") for k in next(csv.reader(f), []))
  with open(path) as f:
    return any('"interf/cos/' in line for line in f)


def _tail(df: pd.DataFrame, since: float) -> pd.DataFrame:
  """The rows from fraction `since` of training on (0: all, 0.5: 2nd half)."""
  return df.iloc[int(len(df) * since):]


def _arm_runs(workdirs: Mapping[str, Sequence[str]], since: float):
  """(arm, [(its series from fraction `since` on, pair)] over its seeds'
  runs with interference statistics) per arm."""
  for arm, dirs in workdirs.items():
    runs = []
    for wd in dirs:
      if has_interference(wd):
        df = _tail(series(wd), since)
        runs += [(df, pair) for pair in pairs(df)]
    yield arm, runs


def compare_arms(workdirs: Mapping[str, Sequence[str]], since: float = 0.0
                 ) -> pd.DataFrame:
  """Index (arm, pair); column "global" the mean over seeds of each run's
  mean global cosine, then one column per parameter group the same for the
  per-group cosine; the means over the rows of each run's series (`series`:
  its logged steps, subsampled beyond SERIES_ROWS) from fraction `since` of
  training on. Runs without interference statistics are left out (and arms
  with none)."""
  rows = []
  for arm, runs in _arm_runs(workdirs, since):
    per_seed = []
    for df, pair in runs:
      row = {"arm": arm, "pair": pair,
             "global": df[f"interf/cos/{pair}"].mean()}
      row.update({g: df[f"group/{g}/cos/{pair}"].mean() for g in groups(df)})
      per_seed.append(row)
    if per_seed:
      rows.append(pd.DataFrame(per_seed).groupby(["arm", "pair"],
                                                 sort=False).mean())
  if not rows:
    return pd.DataFrame()
  return pd.concat(rows)


def arm_summary(workdirs: Mapping[str, Sequence[str]], since: float = 0.5,
                worst: int = 3) -> pd.DataFrame:
  """Index (arm, pair), mean over seeds of each run's statistics over the
  rows of its series (`series`) from fraction `since` of training on: the
  global cosine ("cos"), the same-task split-half null cosines of both tasks
  ("null_a", "null_b"), the debiased cosine with the unbiased pieces
  averaged over all those steps ("debiased"), the norm ratio, the fraction
  of steps with cos < 0; and
  "lowest": the `worst` groups of lowest mean cosine (of the first seed).
  A statistic a run does not log is NaN (R3-RL logs only the cosine of its
  gradient with each understanding task's, interf/cos/rl:<task>)."""
  rows = []
  for arm, runs in _arm_runs(workdirs, since):
    per_seed = []
    for df, pair in runs:
      a, b = pair.split(":")
      row = {"arm": arm, "pair": pair,
             "cos": df[f"interf/cos/{pair}"].mean(),
             "null_a": df.get(f"interf/null_cos/{a}", pd.Series(
                 [np.nan])).mean(),
             "null_b": df.get(f"interf/null_cos/{b}", pd.Series(
                 [np.nan])).mean(),
             "norm_ratio": df.get(f"interf/norm_ratio/{pair}", pd.Series(
                 [np.nan])).mean(),
             "conflict": (df[f"interf/cos/{pair}"] < 0).mean()}
      row["debiased"] = (debiased_cosine(df, pair, len(df)).iloc[-1]
                         if f"interf/null_dot/{a}" in df else np.nan)
      group_cos = {g: df[f"group/{g}/cos/{pair}"].mean() for g in groups(df)}
      row["lowest"] = ", ".join(
          f"{g} {v:+.3f}" for g, v in sorted(group_cos.items(),
                                             key=lambda x: x[1])[:worst])
      per_seed.append(row)
    if per_seed:
      frame = pd.DataFrame(per_seed)
      stats = frame.drop(columns="lowest").groupby(
          ["arm", "pair"], sort=False).mean()
      stats["lowest"] = frame.groupby(["arm", "pair"], sort=False)[
          "lowest"].first()
      rows.append(stats)
  return pd.concat(rows) if rows else pd.DataFrame()


def arm_cosine(workdirs: Sequence[str], pair: str) -> pd.DataFrame:
  """The global cosine of `pair` by step over an arm's seeds: columns mean,
  std (sample; NaN with one seed) and n."""
  found = [series(wd)[f"interf/cos/{pair}"] for wd in workdirs
           if has_interference(wd)]
  df = pd.concat(found, axis=1)
  return pd.DataFrame({"mean": df.mean(axis=1),
                       "std": df.std(axis=1, ddof=1), "n": df.count(axis=1)})


def plot_arms_cosine(ax, workdirs: Mapping[str, Sequence[str]], pair: str):
  """The global cosine over training per arm: mean over seeds, band +- std."""
  for arm, dirs in workdirs.items():
    if not any(has_interference(wd) for wd in dirs):
      continue
    c = arm_cosine(dirs, pair)
    line, = ax.plot(c.index, c["mean"], lw=1.5, label=arm)
    std = c["std"].fillna(0)
    ax.fill_between(c.index, c["mean"] - std, c["mean"] + std, alpha=0.2,
                    color=line.get_color())
  ax.axhline(0, color="k", lw=0.5)
  ax.set_xlabel("step")
  ax.set_title(f"global cosine {pair}")
  ax.legend(fontsize="small")


def arm_series(workdirs: Sequence[str], pair: str, window: int = 20
               ) -> pd.DataFrame:
  """By logged step, the mean over an arm's seeds of: the global cosine
  ("cos", a rolling mean over `window` rows of each run's series), the windowed debiased
  cosine ("debiased"; NaN without the split-half statistics) and the mean
  split-half null cosine of the two tasks ("null", rolling). Empty when no
  run has the pair."""
  a, b = pair.split(":")
  runs = []
  for wd in workdirs:
    if not has_interference(wd):
      continue
    df = series(wd)
    if pair not in pairs(df):
      continue
    roll = lambda k: df[k].rolling(window, min_periods=1).mean()  # noqa: E731
    halves = f"interf/null_dot/{a}" in df
    runs.append(pd.DataFrame({
        "cos": roll(f"interf/cos/{pair}"),
        "debiased": debiased_cosine(df, pair, window) if halves else np.nan,
        "null": (roll(f"interf/null_cos/{a}") + roll(f"interf/null_cos/{b}"))
                / 2 if halves else np.nan}))
  return pd.concat(runs).groupby(level=0).mean() if runs else pd.DataFrame()


def plot_arms_over_training(ax, workdirs: Mapping[str, Sequence[str]],
                            pair: str, window: int = 20):
  """Per arm (mean over seeds): the rolling global cosine (solid), the
  windowed debiased cosine (dashed) and the split-half null cosine (dotted)."""
  for arm, dirs in workdirs.items():
    s = arm_series(dirs, pair, window)
    if s.empty:
      continue
    line, = ax.plot(s.index, s["cos"], lw=1.5, label=f"{arm} cos")
    ax.plot(s.index, s["debiased"], "--", lw=1, color=line.get_color(),
            label=f"{arm} debiased")
    ax.plot(s.index, s["null"], ":", lw=1, color=line.get_color())
  ax.axhline(0, color="k", lw=0.5)
  ax.set_xlabel("step")
  ax.set_title(f"{pair}: cosine (solid), debiased (dashed), null (dotted)",
               fontsize=9)
  ax.legend(fontsize=6)


def plot_arms_heatmap(ax, table: pd.DataFrame, pair: str,
                      vmax: float | None = None):
  """Arms (rows) x parameter groups (columns) of compare_arms' per-group
  cosine for one pair, each cell annotated; the colour scale is +-vmax
  (default: the largest |value| of every pair, so that small cosines stay
  visible and panels of several pairs share one scale)."""
  if vmax is None:
    vmax = max(float(np.nanmax(np.abs(
        table.drop(columns="global").to_numpy(float)))), 1e-3)
  t = table.xs(pair, level="pair").drop(columns="global")
  t = t.dropna(axis=1, how="all")
  values = t.to_numpy(float)
  im = ax.imshow(values, aspect="auto", cmap="RdBu", vmin=-vmax, vmax=vmax,
                 interpolation="nearest")
  for (i, j), v in np.ndenumerate(values):
    if np.isfinite(v):
      ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=6)
  ax.set_yticks(range(len(t.index)), t.index)
  ax.set_xticks(range(len(t.columns)), t.columns, rotation=90, fontsize=7)
  ax.set_title(f"per-group cosine {pair}")
  return im
