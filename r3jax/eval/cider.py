"""CIDEr-D (Vedantam et al., 2015) as coco-caption's `Cider` scorer computes it.

For every n-gram order n = 1..4 a sentence is a vector of tf-idf weights
  g(w) = count(w) * (log(#images) - log(max(1, df(w))))
where df(w) is the number of images whose reference set contains w, so the idf
comes from the references of the evaluated corpus (and a one-image corpus
scores 0). Per image and reference the order-n term is
  sum_w min(g_hyp(w), g_ref(w)) * g_ref(w) / (|g_hyp| |g_ref|)
(0 when either norm is 0) times the length penalty exp(-d^2 / (2 * 6^2)). The
image score is 10 * the mean of these terms over orders and references; the
corpus score is the mean over images.

d is the difference in tokens. (That scorer counts bigrams, which differs
only for an empty sentence, whose terms are 0 anyway.) Sentences are either
strings, split on whitespace as that scorer does (no lowercasing or
punctuation handling: normalise first), or token lists used as they are.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np

from r3jax.eval.bleu import ngrams

MAX_N = 4
SIGMA = 6.0

Sentence = str | Sequence[str]


def _tokens(sentence: Sentence) -> list[str]:
  return sentence.split() if isinstance(sentence, str) else list(sentence)


def _counts(tokens: list[str]) -> collections.Counter:
  return sum((ngrams(tokens, n) for n in range(1, MAX_N + 1)),
             collections.Counter())


def _image_score(counts: list[collections.Counter], lens: list[int],
                 idf: dict[tuple, float], log_images: float) -> float:
  """One image, dense over its own n-grams only.

  S: sentences (hypothesis first, then the R references), K: distinct n-grams
  of the image, N: n-gram orders.
  """
  keys = list(set().union(*counts))
  counts_SxK = np.array([[c[k] for k in keys] for c in counts], np.float64)
  idf_K = np.array([idf.get(k, log_images) for k in keys])
  order_KxN = (np.array([len(k) for k in keys])[:, None]
               == np.arange(1, MAX_N + 1)).astype(np.float64)
  g_SxK = counts_SxK * idf_K
  norm_SxN = np.sqrt(g_SxK**2 @ order_KxN)
  dot_RxN = (np.minimum(g_SxK[:1], g_SxK[1:]) * g_SxK[1:]) @ order_KxN
  denom_RxN = norm_SxN[:1] * norm_SxN[1:]
  cos_RxN = np.divide(dot_RxN, denom_RxN, out=np.zeros_like(dot_RxN),
                      where=denom_RxN > 0)
  delta_R = lens[0] - np.array(lens[1:], np.float64)
  penalty_R = np.exp(-delta_R**2 / (2 * SIGMA**2))
  return 10.0 * float(np.mean(cos_RxN * penalty_R[:, None]))


def cider_d(hypotheses: Sequence[Sentence],
            references: Sequence[Sequence[Sentence]]
            ) -> tuple[float, np.ndarray]:
  """(corpus CIDEr-D, per-image scores); references[i] lists image i's refs."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} "
                     "reference sets")
  if not hypotheses:
    raise ValueError("CIDEr-D of an empty corpus is undefined")
  if any(not refs for refs in references):
    raise ValueError("every image needs at least one reference")
  sents = [[_tokens(s) for s in [h, *rs]]
           for h, rs in zip(hypotheses, references)]
  counts = [[_counts(t) for t in ts] for ts in sents]
  df = collections.Counter(k for cs in counts for k in set().union(*cs[1:]))
  log_images = float(np.log(len(sents)))
  # n-grams absent from every reference set have df 0 -> max(1, 0) = 1.
  idf = {k: log_images - float(np.log(v)) for k, v in df.items()}
  scores = np.array([_image_score(cs, [len(t) for t in ts], idf, log_images)
                     for cs, ts in zip(counts, sents)])
  return float(scores.mean()), scores
