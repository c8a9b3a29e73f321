"""Paired comparisons across seeds and the Holm correction
(r3jax.analysis.study), against scipy and hand-computed values."""

import numpy as np
import pytest
from scipy import stats

from r3jax.analysis import study


def _results(values):
  return [{"arm": arm, "seed": s, "metrics": {"f1": v}}
          for arm, vs in values.items() for s, v in enumerate(vs)]


def test_paired_matches_scipy_and_the_t_interval():
  a, b = [0.61, 0.58, 0.66, 0.60, 0.63], [0.55, 0.57, 0.60, 0.52, 0.61]
  mean, lo, hi, p, n = study.paired(_results({"x": a, "ref": b}), "x", "ref",
                                    "f1")
  d = np.subtract(a, b)
  assert n == 5 and mean == pytest.approx(d.mean())
  assert p == pytest.approx(stats.ttest_rel(a, b).pvalue)
  half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
  assert (lo, hi) == pytest.approx((d.mean() - half, d.mean() + half))
  # Pairing matters: the same numbers unpaired give a larger p here.
  assert p < stats.ttest_ind(a, b).pvalue


def test_paired_needs_two_shared_seeds_and_handles_constant_differences():
  r = _results({"x": [0.5, 0.6], "ref": [0.4]})
  assert study.paired(r, "x", "ref", "f1") is None
  r = _results({"x": [0.5, 0.6, 0.7], "ref": [0.4, 0.5, 0.6]})
  mean, lo, hi, p, n = study.paired(r, "x", "ref", "f1")
  # The same difference in every seed: no t, the exact sign test's p.
  assert mean == pytest.approx(0.1) and (lo, hi) == (mean, mean) and n == 3
  assert p == pytest.approx(stats.binomtest(3, 3, 0.5).pvalue) == 0.25
  r = _results({"x": [0.5, 0.6], "ref": [0.5, 0.6]})
  assert study.paired(r, "x", "ref", "f1")[3] == 1.0
  # Equal but for float rounding is equal: the sign test, 2 / 2^5.
  r = _results({"x": [0.3, 0.7, 0.9, 0.4, 0.5],
                "ref": [0.2, 0.6, 0.8, 0.3, 0.4]})
  mean, lo, hi, p, n = study.paired(r, "x", "ref", "f1")
  assert lo == hi == mean and p == 0.0625 and n == 5


def test_paired_compares_two_keys_of_one_arm_or_of_two():
  # The loop's captions against its own drafts: one arm, two keys.
  rounds = [{"arm": "x", "seed": s, "metrics": {"round0": d, "round3": f}}
            for s, (d, f) in enumerate([(0.60, 0.62), (0.58, 0.61),
                                        (0.63, 0.63)])]
  mean, _, _, p, n = study.paired(rounds, "x", "x", "round3", "round0")
  assert n == 3 and mean == pytest.approx(0.05 / 3)
  assert p == pytest.approx(stats.ttest_rel([0.62, 0.61, 0.63],
                                            [0.60, 0.58, 0.63]).pvalue)
  # Against another arm's key; seeds without it are left out.
  rounds += [{"arm": "j", "seed": s, "metrics": {"caption": v}}
             for s, v in enumerate([0.61, 0.60])]
  mean, _, _, _, n = study.paired(rounds, "x", "j", "round3", "caption")
  assert n == 2 and mean == pytest.approx(0.01)


def test_holm_by_hand():
  # Sorted 0.01, 0.02, 0.03, 0.5 of m = 4: x4, x3, x2, x1, kept monotone.
  assert study.holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx(
      [0.06, 0.04, 0.5, 0.06])
  assert study.holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
  assert study.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
  assert study.holm([]) == []


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_answers():
  a = [True] * 30 + [True] * 9 + [False] * 2 + [False] * 9
  b = [True] * 30 + [False] * 9 + [True] * 2 + [False] * 9
  got = study.mcnemar(a, b)
  assert (got["n"], got["only_a"], got["only_b"]) == (50, 9, 2)
  assert got["diff"] == pytest.approx(7 / 50)
  # Two-sided exact: 2 * P(X <= 2), X ~ Bin(11, 1/2) = 2 * 67 / 2048.
  assert got["p"] == pytest.approx(2 * 67 / 2048)
  assert got["p"] == pytest.approx(stats.binomtest(9, 11, 0.5).pvalue)
  assert study.mcnemar([True, False], [True, False])["p"] == 1.0
  with pytest.raises(ValueError, match="equally long"):
    study.mcnemar([True], [True, False])
  assert study.binomial(94, 151, 0.5) == pytest.approx(
      stats.binomtest(94, 151, 0.5).pvalue)
