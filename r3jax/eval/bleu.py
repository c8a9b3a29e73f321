"""Corpus BLEU (Papineni et al., 2002) on pre-tokenised text.

Clipped n-gram matches and hypothesis n-gram counts are summed over the corpus
before dividing; the score is the geometric mean of the modified precisions
p_1..p_N times the brevity penalty BP = min(1, exp(1 - r / c)), where c is the
total hypothesis length and r sums, per hypothesis, the reference length
closest to the hypothesis length (ties go to the shorter reference). No
smoothing: the score is exactly 0 as soon as one order has no match.

How the common implementations relate to this definition (tested in
tests/test_metrics.py):

  sacreBLEU (tokenize="none", smooth_method="none", force=True, on the tokens
    joined by spaces): identical, including the tie rule of its closest
    reference length; its score is in percent. It takes one reference stream per reference slot, so hypotheses
    with fewer references pad their slots with None (an empty string would be
    a reference of length 0).
  NLTK corpus_bleu (default weights, no smoothing): identical except that each
    hypothesis adds max(1, #n-grams) to the order-n denominator, so a
    hypothesis shorter than n tokens counts one phantom n-gram. A zero
    precision of order > 1 gives a positive score below 1.2e-77 (it takes the
    log of sys.float_info.min) rather than 0.
  pycocoevalcap Bleu(4) (option "closest", same tie rule): every precision is
    (matches + 1e-15) / (total + 1e-9) and the length ratio is
    (c + 1e-15) / (r + 1e-9), with the penalty applied whenever that ratio is
    below 1 (so also, negligibly, when c == r). When every order has a match its
    score is lower than this one by a relative 1e-9 * (sum_n 1 / (N * total_n)
    + 1 / c) at most (to first order; ~1e-12 on a few hundred tokens); when
    some order has none it returns a positive value, e.g. about
    BP * (p_1 p_2 p_3 * 1e-15 / total_4) ** (1/4), instead of 0.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import operator
from collections.abc import Sequence

Tokens = Sequence[str]


@dataclasses.dataclass(frozen=True)
class BleuStats:
  """The score and the corpus sums it is computed from."""
  score: float
  precisions: tuple[float, ...]
  brevity_penalty: float
  matches: tuple[int, ...]  # clipped n-gram matches per order, corpus sum
  totals: tuple[int, ...]   # hypothesis n-grams per order, corpus sum
  hyp_len: int              # c
  ref_len: int              # r


def ngrams(tokens: Tokens, n: int) -> collections.Counter:
  return collections.Counter(
      tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def closest_ref_len(hyp_len: int, ref_lens: Sequence[int]) -> int:
  return min(ref_lens, key=lambda r: (abs(r - hyp_len), r))


def brevity_penalty(hyp_len: int, ref_len: int) -> float:
  if hyp_len >= ref_len:
    return 1.0
  return math.exp(1.0 - ref_len / hyp_len) if hyp_len else 0.0


def _check_tokens(sentence, what: str) -> list[str]:
  # Iterating a str would silently score characters as words.
  if isinstance(sentence, str):
    raise TypeError(f"{what} must be a list of tokens, got the string "
                    f"{sentence!r}; split it first")
  return list(sentence)


def corpus_bleu_stats(hypotheses: Sequence[Tokens],
                      references: Sequence[Sequence[Tokens]],
                      max_n: int = 4) -> BleuStats:
  """BLEU with the statistics it is made of, for reporting and comparison."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} "
                     "reference sets")
  if not hypotheses:
    raise ValueError("BLEU of an empty corpus is undefined")
  matches, totals = [0] * max_n, [0] * max_n
  hyp_len = ref_len = 0
  for i, (hyp, refs) in enumerate(zip(hypotheses, references)):
    hyp = _check_tokens(hyp, f"hypothesis {i}")
    refs = [_check_tokens(r, f"reference of hypothesis {i}") for r in refs]
    if not refs:
      raise ValueError(f"hypothesis {i} has no reference")
    for n in range(1, max_n + 1):
      counts = ngrams(hyp, n)
      # Counter | takes the max count over references, & the clipped minimum.
      ref_max = functools.reduce(operator.or_, (ngrams(r, n) for r in refs))
      matches[n - 1] += sum((counts & ref_max).values())
      totals[n - 1] += sum(counts.values())
    hyp_len += len(hyp)
    ref_len += closest_ref_len(len(hyp), [len(r) for r in refs])
  precisions = tuple(m / t if t else 0.0 for m, t in zip(matches, totals))
  bp = brevity_penalty(hyp_len, ref_len)
  score = 0.0
  if min(matches) > 0:
    score = bp * math.exp(sum(map(math.log, precisions)) / max_n)
  return BleuStats(score, precisions, bp, tuple(matches), tuple(totals),
                   hyp_len, ref_len)


def corpus_bleu(hypotheses: Sequence[Tokens],
                references: Sequence[Sequence[Tokens]],
                max_n: int = 4) -> float:
  """Corpus BLEU-`max_n` in [0, 1]; references[i] lists hypothesis i's refs."""
  return corpus_bleu_stats(hypotheses, references, max_n).score
