"""Task metrics on decoded text: captions, VQA, image-text alignment, verifier.

Every function takes the whole split at once and raises on an empty one: a
task with nothing to score is a configuration error, not a score of 0.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from r3jax.eval.bleu import corpus_bleu
from r3jax.eval.cider import cider_d

VERIFIER_KEYS = ("f1", "precision", "recall", "hallucination", "v_strict",
                 "v_frac")


def normalize(text: str) -> str:
  """Lowercase with single spaces, so "Two " and "two" are the same answer."""
  return " ".join(text.lower().split())


def _check(what: str, predictions: Sequence, targets: Sequence) -> None:
  if len(predictions) != len(targets):
    raise ValueError(f"{what}: {len(predictions)} predictions but "
                     f"{len(targets)} targets")
  if not predictions:
    raise ValueError(f"{what}: nothing to score")


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[str],
                 qtypes: Sequence[str]) -> dict[str, Any]:
  """Exact match after `normalize`, overall and per question type.

  Returns {"accuracy", "count", "qtype": {type: {"accuracy", "count"}}}.
  """
  _check("vqa_accuracy", predictions, answers)
  _check("vqa_accuracy", predictions, qtypes)
  hits = collections.defaultdict(list)
  for p, a, t in zip(predictions, answers, qtypes):
    hits[t].append(normalize(p) == normalize(a))
  every = [h for hs in hits.values() for h in hs]
  return {"accuracy": float(np.mean(every)), "count": len(every),
          "qtype": {t: {"accuracy": float(np.mean(hs)), "count": len(hs)}
                    for t, hs in sorted(hits.items())}}


def ita_accuracy(predictions: Sequence[str],
                 labels: Sequence[str]) -> dict[str, float]:
  """Accuracy of "yes"/"no" answers to "does this caption match the image?".

  yes_rate (predicted "yes") and the accuracies on matching (positive) and on
  mismatching (negative) pairs expose a model that answers one word always;
  invalid_rate counts predictions that are neither word. A per-class accuracy
  is NaN when the split has no pair of that class.
  """
  _check("ita_accuracy", predictions, labels)
  preds = np.array([normalize(p) for p in predictions])
  gold = np.array([normalize(l) for l in labels])
  bad = sorted(set(gold) - {"yes", "no"})
  if bad:
    raise ValueError(f"ita labels must be 'yes' or 'no', got {bad}")
  correct = preds == gold
  pos, neg = gold == "yes", gold == "no"
  return {
      "accuracy": float(correct.mean()),
      "count": len(gold),
      "yes_rate": float(np.mean(preds == "yes")),
      "invalid_rate": float(np.mean((preds != "yes") & (preds != "no"))),
      "pos_accuracy": float(correct[pos].mean()) if pos.any() else float("nan"),
      "neg_accuracy": float(correct[neg].mean()) if neg.any() else float("nan"),
      "pos_count": int(pos.sum()),
      "neg_count": int(neg.sum()),
  }


def caption_metrics(hypotheses: Sequence[str],
                    references: Sequence[Sequence[str]]) -> dict[str, float]:
  """BLEU-4 and CIDEr-D on lowercase whitespace tokens."""
  _check("caption_metrics", hypotheses, references)
  hyps = [normalize(h).split() for h in hypotheses]
  refs = [[normalize(r).split() for r in rs] for rs in references]
  return {"bleu4": corpus_bleu(hyps, refs), "cider_d": cider_d(hyps, refs)[0]}


def mean_caption_scores(scores: Sequence[Mapping[str, Any] | Any]
                        ) -> dict[str, float]:
  """Means of per-caption verifier scores (mappings or `CaptionScore`s).

  Booleans average to rates; `parsed` is reported as parse_rate.
  """
  if not scores:
    raise ValueError("mean_caption_scores: nothing to average")

  def get(s, key):
    return s[key] if isinstance(s, Mapping) else getattr(s, key)

  out = {k: float(np.mean([get(s, k) for s in scores])) for k in VERIFIER_KEYS}
  out["parse_rate"] = float(np.mean([get(s, "parsed") for s in scores]))
  return out
