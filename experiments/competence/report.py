"""experiments/competence/RESULTS.md: the recipe search's learning curves,
each variant's command and CPU time, the relation diagnoses, and the gate
table of the shipped base.

  python -m experiments.competence.report

Reads experiments/competence/runs/<variant>/ (metrics.jsonl, cpu.jsonl),
diagnosis/*.json (python -m experiments.competence.diagnose ... --out) and
base/result.json (python -m experiments.competence.export). A written
reading, experiments/competence/reading.md, goes under the title.
"""

from __future__ import annotations

import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.competence import search  # noqa: E402
from r3jax.analysis import competence  # noqa: E402
from r3jax.analysis import probe  # noqa: E402

HERE = os.path.join("experiments", "competence")
# (metric, column label) of the curve tables, validation split.
COLUMNS = [(f"vqa/qtype/{q}/accuracy", q) for q in competence.QTYPES] + [
    (competence.DISCRIMINATION, "ITA disc."), ("caption/f1", "caption F1"),
    ("caption/v_strict", "V_strict")]
# (metric, column label) of the R3 loop's table, for variants with R3 tasks.
R3_COLUMNS = [("r3/round0/v_strict", "draft V_strict"),
              ("r3/round3/v_strict", "round-3 V_strict"),
              ("r3/round1/improved", "round-1 improved"),
              ("r3/round1/worse", "round-1 worse"),
              ("r3/round1/stop_rate", "round-1 stops"),
              ("r3/reflect_right", "reflect right"),
              ("r3/reflect_helpful", "reflect helpful"),
              ("r3/refine_right", "refine right"),
              ("r3/refine_given_edit", "refine given the edit")]
PLOTTED = {"vqa/qtype/relation/accuracy": competence.VQA_GATE,
           "vqa/qtype/existence/accuracy": competence.VQA_GATE,
           "vqa/qtype/shape/accuracy": competence.VQA_GATE,
           "vqa/qtype/count/accuracy": competence.VQA_GATE,
           competence.DISCRIMINATION: competence.ITA_GATE,
           "caption/f1": competence.CAPTION_GATE}


def cpu(wd: str) -> tuple[float, float, int]:
  """(CPU seconds, wall seconds, last step) over a variant's stretches."""
  path = os.path.join(wd, "cpu.jsonl")
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      rows = [json.loads(line) for line in f]
  return (sum(r["cpu_s"] for r in rows), sum(r["wall_s"] for r in rows),
          search.last_step(wd))


def _table(head, rows) -> list[str]:
  return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
          ["| " + " | ".join(r) + " |" for r in rows])


def variant_section(name: str, every: int = 0) -> list[str]:
  """The variant's description, command, CPU time and validation curve,
  every 500 steps (every 2,000 on a schedule longer than 12,000)."""
  every = every or (500 if search.steps(name) <= 12_000 else 2000)
  wd = search.workdir(name)
  cpu_s, wall_s, step = cpu(wd)
  curve = [c for c in competence.curve(wd) if c["step"] % every == 0]
  rows = [[str(c["step"])] + [f"{c[k]:.3f}" if k in c else "-"
                              for k, _ in COLUMNS] for c in curve]
  if os.path.exists(os.path.join(wd, "cpu.jsonl")):
    cost = (f"{cpu_s / 3600:.2f} CPU-hours ({wall_s / 3600:.2f} h of wall "
            "time; both cores, often shared with another variant)")
  else:
    cost = "CPU time not recorded (its runner was stopped with it)"
  if name in search.BRANCHES:
    parent, at = search.BRANCHES[name]
    cost += (f" since it left `{parent}` at step {at:,} (that run's time to "
             "there is in its own section)")
  return [f"### `{name}`", "", search.VARIANTS[name][0] + ".", "",
          f"Trained to step {step:,} of {search.steps(name):,}: {cost}.", "", "```",
          search.shown(name), "```", "",
          *_table(["step"] + [label for _, label in COLUMNS], rows), "",
          *_r3_table(wd, every), *_test_gates(wd)]


def _r3_table(wd: str, every: int) -> list[str]:
  """The R3 loop's scores over a variant's validation evaluations (the
  stages: r3jax/r3/loop.py), when it trains R3 tasks."""
  keys = [k for k, _ in R3_COLUMNS]
  curve = [(str(c["step"]), c) for c in competence.curve(wd, extra=keys)
           if c["step"] % every == 0 and "r3/round0/v_strict" in c]
  if not curve:
    return []
  curve += [(f"{c['step']} (test)", c)
            for c in competence.curve(wd, "test", extra=keys)
            if "r3/round0/v_strict" in c]
  rows = [[step] + [f"{c[k]:.3f}" if k in c else "-" for k in keys]
          for step, c in curve]
  return ["The R3 loop on the same images, and at the end on the whole test "
          "split (three rounds; improved / worse: V_frac against the "
          "draft):", "",
          *_table(["step"] + [label for _, label in R3_COLUMNS], rows), ""]


def _test_gates(wd: str) -> list[str]:
  """The gate table of a variant that finished its schedule (its final
  evaluation, on the whole test split)."""
  try:
    metrics = competence.read(wd, "test")
  except ValueError:
    return []
  return ["At the end of its schedule, on the test split (1,000 images):", "",
          competence.table(metrics, competence.max_objects_of(wd)), ""]


def plot(names, path: str) -> None:
  fig, axes = plt.subplots(1, len(PLOTTED), figsize=(3.3 * len(PLOTTED), 3.2))
  for name in names:
    curve = competence.curve(search.workdir(name))
    for ax, key in zip(axes, PLOTTED):
      pts = [(c["step"], c[key]) for c in curve if key in c]
      if pts:
        ax.plot(*zip(*pts), marker=".", label=name)
  for ax, (key, gate) in zip(axes, PLOTTED.items()):
    ax.axhline(gate, color="k", ls="--", lw=0.8)  # the gate
    ax.set_ylim(0, 1)
    ax.set_title(key.replace("vqa/qtype/", "").replace("/accuracy", ""))
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[-1].legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def relations_section() -> list[str]:
  """The relation breakdowns (python -m experiments.competence.relations
  ... --out diagnosis/relations_*.json), one column per run."""
  paths = sorted(glob.glob(os.path.join(HERE, "diagnosis", "relations_*.json")))
  runs = []
  for p in paths:
    with open(p) as f:
      runs.append((os.path.basename(p)[len("relations_"):-5], json.load(f)))
  if not runs:
    return []
  groups = [g for g in runs[0][1]["groups"] if " | " not in g]
  head = ["", *(name for name, _ in runs)]
  rows = [[g, *(f"{d['groups'][g]['accuracy']:.3f} "
                f"({int(d['groups'][g]['count'])})" if g in d["groups"]
                else "" for _, d in runs)] for g in groups]
  yes = [["answers yes when the truth is no (as drawn)",
          *(_yes_when_no(d) for _, d in runs)]]
  trace = [[f"{g}: written indices A / B",
            *(_indices(d["groups"].get(g, {})) for _, d in runs)]
           for g in ("canonical: left of", "canonical: above")]
  paths = dict(zip((name for name, _ in runs), paths))
  paired = [[f"canonical, paired with {PAIRED_WITH}: difference (exact "
             "McNemar p)", *(_paired(paths[name], paths.get(PAIRED_WITH))
                             for name, _ in runs)]]
  tests = sum(cell not in ("", "-") for cell in paired[0][1:])
  return ["## Relation accuracy by phrasing", "",
          "`python -m experiments.competence.relations WORKDIR --out "
          "experiments/competence/diagnosis/relations_<run>_<step>.json`: "
          "every relation question of the first 256 validation images asked "
          "as drawn and rewritten to its canonical phrasing (the same "
          "answer); and the relation clauses of the greedy captions of the "
          "same images, checked against the scene. Accuracy (questions). "
          "Runs trained with written grid indices "
          "(`data.relation_answers`) are scored by their last word; their "
          "indices' accuracy is given for each object (chance 1/3). The "
          f"last row pairs each run's answers to the canonical questions "
          f"with {PAIRED_WITH}'s (`relations --compare`, the same questions "
          f"and start): {tests} tests, not corrected for their number.",
          "", *_table(head, rows + yes + trace + paired), ""]


# The relation breakdown the others are paired with: the same start and
# schedule, word answers, no model change.
PAIRED_WITH = "rel_only_4000"


def _indices(group) -> str:
  if "trace a" not in group:
    return ""
  return f"{group['trace a']:.3f} / {group['trace b']:.3f}"


def _paired(path: str, ref: str | None) -> str:
  from experiments.competence import relations  # noqa: PLC0415
  if ref is None or path == ref:
    return "-"
  try:
    got = relations.compare(path, ref)
  except ValueError:  # saved before per-question predictions were kept
    return ""
  return f"{got['diff']:+.3f} ({got['p']:.2g})"


def _yes_when_no(d) -> str:
  """The share of as-drawn relation questions whose truth is "no" answered
  "yes" (1 - accuracy on them)."""
  parts = [v for g, v in d["groups"].items()
           if g.startswith("as drawn: ") and g.endswith(" | no")]
  n = sum(v["count"] for v in parts)
  if not n:
    return ""
  return f"{1 - sum(v['accuracy'] * v['count'] for v in parts) / n:.3f}"


def diagnosis_section() -> list[str]:
  paths = sorted(p for p in glob.glob(os.path.join(HERE, "diagnosis", "*.json"))
                 if not os.path.basename(p).startswith("relations_"))
  lines = []
  for p in paths:
    with open(p) as f:
      d = json.load(f)
    lines += [f"### {d.get('label', os.path.basename(p)[:-5])}", "",
              f"`{d['command']}`" if "command" in d else "", "",
              probe.table(d), ""]
  return (["## Relation diagnosis", ""] + lines) if lines else []


def base_section(name: str = "base",
                 title: str = "The shipped base") -> list[str]:
  """The gate table of an export under experiments/competence/ (`base`,
  the competent base; `r3_start`, the R3-testable start; `r3_loop`, the R3
  start with the loop trained) and what it cost."""
  path = os.path.join(HERE, name, "result.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    r = json.load(f)
  return [f"## {title} (`experiments/competence/{name}/`)", "",
          f"From `{r['run']}` at step {r['step']:,}; "
          f"{r['cpu_hours']:.2f} CPU-hours of training on "
          f"{r['hardware']['cpus']} CPUs, "
          f"{r['lineage_cpu_hours']:.2f} with the runs it continues ("
          + ", ".join(f"`{x['run']}` to step {x['to_step']:,}"
                      for x in r["lineage"]) + ").", "",
          competence.table(r["metrics"], r.get("max_objects", 3)), ""]


def collect(names=None) -> str:
  names = [n for n in (names or search.VARIANTS)
           if os.path.exists(os.path.join(search.workdir(n), "metrics.jsonl"))]
  lines = ["# Competence: a model that sees the world", ""]
  reading = os.path.join(HERE, "reading.md")
  if os.path.exists(reading):
    with open(reading) as f:
      lines += [f.read().strip(), ""]
  lines += base_section()
  lines += base_section("r3_start", "The R3-testable start")
  lines += base_section("r3_loop", "The R3 start, with the loop trained")
  plot(names, os.path.join(HERE, "curves.png"))
  lines += ["## Learning curves", "",
            "Validation split (its first 256 images: about 1,500 questions, "
            "1,024 ITA pairs and 256 captions) every 500 steps (every 2,000 "
            "in the tables of the 40,000-step schedule); gates: "
            "each VQA type >= 0.95, ITA discrimination (pos + neg - 1) >= "
            "0.80, caption fact F1 >= 0.90.", "", "![curves](curves.png)", ""]
  for name in names:
    lines += variant_section(name)
  lines += relations_section()
  lines += diagnosis_section()
  path = os.path.join(HERE, "RESULTS.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


if __name__ == "__main__":
  print(collect(sys.argv[1:] or None))
