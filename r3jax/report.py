"""Plain-text tables of evaluation results."""

from __future__ import annotations

from collections.abc import Mapping

# (key, label, target) for the headline metrics; target None = no target.
# The targets are the embedded world's (tables of real-data runs omit them).
HEADLINE = (
    ("caption/f1", "caption fact F1", 0.85),
    ("caption/v_strict", "caption V_strict", None),
    ("caption/v_frac", "caption V_frac", None),
    ("caption/hallucination", "caption hallucination", None),
    ("caption/bleu4", "caption BLEU-4", None),
    ("caption/cider_d", "caption CIDEr-D", None),
    ("vqa/accuracy", "VQA accuracy", 0.85),
    ("ita/accuracy", "ITA accuracy", 0.85),
)


def line(result: Mapping[str, float], step: int, split: str) -> str:
  """One line of an evaluation's headline metrics that have targets."""
  cells = [f"{label} {result[k]:.4f}" for k, label, t in HEADLINE
           if t is not None and k in result]
  return f"step {step} {split}: " + " | ".join(cells)


def table(result: Mapping[str, float], columns: Mapping[str, Mapping] | None = None,
          world: bool = True) -> str:
  """One column per run (default: a single column of `result`); with
  `world`, the world's targets beside them."""
  columns = dict(columns or {"value": result})
  keys = [k for k, _, _ in HEADLINE if any(k in c for c in columns.values())]
  keys += sorted({k for c in columns.values() for k in c
                  if k not in keys and "/" in k and not k.endswith("count")})
  labels = {k: label for k, label, _ in HEADLINE}
  targets = {k: t for k, _, t in HEADLINE} if world else {}
  w = max([len(labels.get(k, k)) for k in keys] + [6])
  head = f"{'metric':<{w}}  " + "  ".join(f"{n:>10}" for n in columns)
  head += "  target"
  lines = [head, "-" * len(head)]
  for k in keys:
    cells = "  ".join(f"{c[k]:>10.4f}" if k in c else f"{'-':>10}"
                      for c in columns.values())
    t = targets.get(k)
    lines.append(f"{labels.get(k, k):<{w}}  {cells}  {'>= %.2f' % t if t else ''}")
  for extra in ("train_seconds", "eval_seconds", "total_seconds"):
    if any(extra in c for c in columns.values()):
      cells = "  ".join(f"{c.get(extra, float('nan')):>10.1f}"
                        for c in columns.values())
      lines.append(f"{extra:<{w}}  {cells}")
  return "\n".join(lines)
