"""BLEU and CIDEr-D against NLTK, sacreBLEU and pycocoevalcap; the task
metrics against hand-computed values."""

import math
import warnings

import numpy as np
import pytest
import sacrebleu
from nltk.translate import bleu_score as nltk_bleu
from pycocoevalcap.bleu.bleu import Bleu as CocoBleu
from pycocoevalcap.cider.cider import Cider as CocoCider

from r3jax.eval import bleu, cider, metrics
from r3jax.world import CaptionScore

# ---------------------------------------------------------------- corpora


def _noisy(ref: list[str], length: int, vocab: list[str],
           rng: np.random.Generator, p_sub: float = 0.25) -> list[str]:
  """A hypothesis of `length` tokens that shares n-grams with `ref`."""
  out = [rng.choice(vocab) if rng.random() < p_sub else t for t in ref]
  while len(out) < length:
    out.append(str(rng.choice(vocab)))
  return [str(t) for t in out[:length]]


def random_corpus(seed: int, n: int, hyp_len: tuple[int, int],
                  ref_len: tuple[int, int], n_refs: tuple[int, int],
                  vocab_size: int = 6):
  """Hypotheses are noisy copies of one of their references."""
  rng = np.random.default_rng(seed)
  vocab = [f"w{i}" for i in range(vocab_size)]
  hyps, refs = [], []
  for _ in range(n):
    rs = [[str(w) for w in rng.choice(vocab, rng.integers(*ref_len))]
          for _ in range(rng.integers(*n_refs))]
    hyps.append(_noisy(rs[0], int(rng.integers(*hyp_len)), vocab, rng))
    refs.append(rs)
  return hyps, refs


def tie_corpus(seed: int, n: int = 40):
  """Every hypothesis has two references equally far from its length."""
  rng = np.random.default_rng(seed)
  vocab = [f"w{i}" for i in range(5)]
  hyps, refs, shorter = [], [], 0
  for _ in range(n):
    length, d = int(rng.integers(5, 12)), int(rng.integers(1, 4))
    rs = [[str(w) for w in rng.choice(vocab, length + s)] for s in (d, -d)]
    hyps.append(_noisy(rs[1], length, vocab, rng))
    refs.append(rs)
    shorter += length - d
  return hyps, refs, shorter


_COLORS = ["red", "green", "blue", "yellow", "purple", "gray"]
_SHAPES = ["circle", "square", "triangle", "star"]
_SIZES = ["small", "large"]
_RELS = [("left", "of", "right", "of"), ("above", "", "below", "")]


def caption_corpus(seed: int, n: int = 60, n_refs: int = 5):
  """Scene descriptions in a small caption grammar, 5 paraphrases each."""
  rng = np.random.default_rng(seed)
  pick = lambda xs: str(xs[rng.integers(len(xs))])
  hyps, refs = [], []
  for _ in range(n):
    a = f"{pick(_SIZES)} {pick(_COLORS)} {pick(_SHAPES)}"
    b = f"{pick(_SIZES)} {pick(_COLORS)} {pick(_SHAPES)}"
    r1, p1, r2, p2 = _RELS[rng.integers(len(_RELS))]
    rel, inv = f"{r1} {p1}".strip(), f"{r2} {p2}".strip()
    templates = [f"a {a} is {rel} a {b}", f"the {b} is {inv} the {a}",
                 f"there is a {a} {rel} a {b} .",
                 f"two objects : a {a} and a {b}",
                 f"a {b} and a {a} that is {rel} it",
                 f"we see a {a} {rel} the {b}"]
    order = rng.permutation(len(templates))
    rs = [templates[i].split() for i in order[:n_refs]]
    hyp = templates[order[-1]].split()
    if rng.random() < 0.4:  # a wrong color, as a hallucinating model writes
      hyp = [pick(_COLORS) if w in _COLORS and rng.random() < 0.5 else w
             for w in hyp]
    if rng.random() < 0.3:  # a truncated caption
      hyp = hyp[:int(rng.integers(4, len(hyp) + 1))]
    hyps.append(hyp)
    refs.append(rs)
  return hyps, refs


BLEU_CORPORA = {
    "random": lambda: random_corpus(0, 60, (4, 16), (4, 16), (1, 5)),
    "hyps_shorter": lambda: random_corpus(1, 50, (4, 8), (9, 16), (1, 4)),
    "hyps_longer": lambda: random_corpus(2, 50, (12, 20), (4, 9), (2, 5)),
    "ties": lambda: tie_corpus(3)[:2],
    "captions": lambda: caption_corpus(4),
    "single_ref": lambda: random_corpus(5, 40, (4, 12), (4, 12), (1, 2)),
}

# ---------------------------------------------------------- BLEU references


def nltk_corpus_bleu(hyps, refs) -> float:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # it warns on zero counts
    return nltk_bleu.corpus_bleu(refs, hyps)


def sacre_corpus_bleu(hyps, refs) -> float:
  width = max(len(rs) for rs in refs)
  streams = [[" ".join(rs[k]) if k < len(rs) else None for rs in refs]
             for k in range(width)]
  out = sacrebleu.corpus_bleu([" ".join(h) for h in hyps], streams,
                              tokenize="none", smooth_method="none", force=True)
  return out.score / 100


def coco_bleu4(hyps, refs) -> float:
  res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
  gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
  return CocoBleu(4).compute_score(gts, res, verbose=0)[0][3]


def coco_formula(s: bleu.BleuStats) -> float:
  """pycocoevalcap's epsilon-guarded BLEU-4 from our corpus statistics."""
  score = math.prod((m + 1e-15) / (t + 1e-9)
                    for m, t in zip(s.matches, s.totals))**0.25
  ratio = (s.hyp_len + 1e-15) / (s.ref_len + 1e-9)
  return score * math.exp(1 - 1 / ratio) if ratio < 1 else score


def coco_bound(s: bleu.BleuStats) -> float:
  """The documented |ours - pycocoevalcap| bound when every order matches,
  with room for rounding."""
  rel = 1e-9 * (sum(0.25 / t for t in s.totals) + 1 / s.hyp_len)
  return s.score * rel + 1e-14


# ------------------------------------------------------------- BLEU tests


@pytest.mark.parametrize("name", sorted(BLEU_CORPORA))
def test_bleu_matches_nltk_and_sacrebleu(name):
  hyps, refs = BLEU_CORPORA[name]()
  assert min(map(len, hyps)) >= 4  # where NLTK's denominators coincide
  s = bleu.corpus_bleu_stats(hyps, refs)
  assert min(s.matches) > 0 and 0.01 < s.score < 1  # a non-degenerate corpus
  assert s.score == pytest.approx(nltk_corpus_bleu(hyps, refs), abs=1e-9)
  assert s.score == pytest.approx(sacre_corpus_bleu(hyps, refs), abs=1e-6)
  assert bleu.corpus_bleu(hyps, refs) == s.score


@pytest.mark.parametrize("name", sorted(BLEU_CORPORA))
def test_bleu_within_documented_bound_of_pycocoevalcap(name):
  hyps, refs = BLEU_CORPORA[name]()
  s = bleu.corpus_bleu_stats(hyps, refs)
  coco = coco_bleu4(hyps, refs)
  assert coco == pytest.approx(coco_formula(s), rel=1e-12)
  assert 0 <= s.score - coco <= coco_bound(s)


def test_bleu_corpora_exercise_the_brevity_penalty_both_ways():
  shorter = bleu.corpus_bleu_stats(*BLEU_CORPORA["hyps_shorter"]())
  longer = bleu.corpus_bleu_stats(*BLEU_CORPORA["hyps_longer"]())
  assert shorter.hyp_len < shorter.ref_len
  assert shorter.brevity_penalty == pytest.approx(
      math.exp(1 - shorter.ref_len / shorter.hyp_len))
  assert longer.hyp_len > longer.ref_len and longer.brevity_penalty == 1.0


def test_bleu_ties_take_the_shorter_reference():
  hyps, refs, shorter = tie_corpus(3)
  s = bleu.corpus_bleu_stats(hyps, refs)
  assert s.ref_len == shorter
  # The longer choice would have changed the penalty, so the tie rule matters.
  longer = shorter + 2 * sum(len(rs[0]) - len(h) for h, rs in zip(hyps, refs))
  assert bleu.brevity_penalty(s.hyp_len, longer) < s.brevity_penalty
  assert bleu.closest_ref_len(5, [7, 3]) == 3
  assert bleu.closest_ref_len(4, [2, 6, 5]) == 5


def test_bleu_short_hypotheses_differ_from_nltk_only_by_its_phantom_ngrams():
  hyps, refs = random_corpus(6, 50, (1, 9), (3, 10), (1, 4))
  short = [sum(len(h) < n for h in hyps) for n in range(1, 5)]
  assert short[3] > 0 and short[0] == 0
  s = bleu.corpus_bleu_stats(hyps, refs)
  assert s.totals == tuple(sum(max(len(h) - n + 1, 0) for h in hyps)
                           for n in range(1, 5))
  assert s.score == pytest.approx(sacre_corpus_bleu(hyps, refs), abs=1e-6)
  nltk = nltk_corpus_bleu(hyps, refs)
  assert abs(s.score - nltk) > 1e-4
  phantom = s.brevity_penalty * math.exp(np.mean(
      [math.log(m / (t + k)) for m, t, k in zip(s.matches, s.totals, short)]))
  assert nltk == pytest.approx(phantom, abs=1e-12)


def test_bleu_zero_when_an_order_has_no_match():
  # Up to trigrams match, no 4-gram does.
  hyps = [["a", "b", "c", "x", "y"], ["p", "q", "z", "r", "s"]]
  refs = [[["a", "b", "c", "d", "x", "y"]], [["p", "q", "r", "s", "t"]]]
  s = bleu.corpus_bleu_stats(hyps, refs)
  assert s.matches[2] > 0 and s.matches[3] == 0 and s.score == 0.0
  assert sacre_corpus_bleu(hyps, refs) == 0.0
  assert 0 < nltk_corpus_bleu(hyps, refs) < 1e-70
  coco = coco_bleu4(hyps, refs)
  assert coco > 1e-5  # pycocoevalcap's epsilon, far from a near-zero
  assert coco == pytest.approx(coco_formula(s), rel=1e-12)


def test_bleu_by_hand():
  same = ["a", "small", "red", "circle", "above", "a", "square"]
  assert bleu.corpus_bleu([same], [[same, ["other"]]]) == 1.0
  # All precisions 1, c = 6, r = 9.
  hyp = list("abcdef")
  assert bleu.corpus_bleu([hyp], [[list("abcdefghi")]]) == pytest.approx(
      math.exp(1 - 9 / 6), abs=1e-15)
  # Clipping: p = 4/6, 3/5, 2/4, 1/3; the closest reference (5) is shorter.
  s = bleu.corpus_bleu_stats([list("ababab")], [[list("ababx"), list("bab")]])
  assert s.matches == (4, 3, 2, 1) and s.totals == (6, 5, 4, 3)
  assert s.ref_len == 5 and s.brevity_penalty == 1.0
  assert s.score == pytest.approx((1 / 15)**0.25, abs=1e-15)
  # No 4-gram in common although trigrams match.
  assert bleu.corpus_bleu([list("abcde")], [[list("abcxde")]]) == 0.0


def test_bleu_rejects_bad_input():
  with pytest.raises(TypeError, match="list of tokens"):
    bleu.corpus_bleu(["a red circle"], [[["a", "red", "circle"]]])
  with pytest.raises(ValueError, match="empty corpus"):
    bleu.corpus_bleu([], [])
  with pytest.raises(ValueError, match="no reference"):
    bleu.corpus_bleu([["a"]], [[]])
  with pytest.raises(ValueError, match="2 hypotheses but 1"):
    bleu.corpus_bleu([["a"], ["b"]], [[["a"]]])


# ------------------------------------------------------------ CIDEr-D


def coco_cider(hyps, refs):
  res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
  gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
  return CocoCider().compute_score(gts, res)


def _with_edge_cases(hyps, refs):
  """Adds an empty hypothesis, a one-word one, a copied reference and an
  empty reference."""
  return (hyps + [[], ["w1"], list(refs[0][2]), list(refs[3][0])],
          refs + [refs[1], refs[2], refs[0], refs[3] + [[]]])


CIDER_CORPORA = {
    "random": lambda: _with_edge_cases(
        *random_corpus(10, 40, (1, 15), (3, 15), (5, 6))),
    # Four words make every sentence repeat n-grams.
    "repeats": lambda: random_corpus(11, 40, (2, 20), (2, 20), (5, 6), 4),
    "varying_refs": lambda: random_corpus(12, 40, (3, 12), (3, 12), (1, 7), 10),
    "captions": lambda: caption_corpus(13, 60),
    "long_vs_short": lambda: random_corpus(14, 30, (18, 30), (3, 8), (5, 6), 8),
}


@pytest.mark.parametrize("name", sorted(CIDER_CORPORA))
def test_cider_d_matches_pycocoevalcap(name):
  hyps, refs = CIDER_CORPORA[name]()
  score, per_image = cider.cider_d(hyps, refs)
  coco, coco_per_image = coco_cider(hyps, refs)
  assert per_image.shape == (len(hyps),)
  assert np.ptp(per_image) > 0.1  # scores spread: the comparison has teeth
  np.testing.assert_allclose(per_image, coco_per_image, rtol=0, atol=1e-9)
  assert score == pytest.approx(coco, abs=1e-9)
  assert score == pytest.approx(per_image.mean(), abs=1e-15)


def test_cider_d_strings_split_on_whitespace():
  hyps, refs = CIDER_CORPORA["captions"]()
  as_text = cider.cider_d([" ".join(h) for h in hyps],
                          [["  ".join(r) + " " for r in rs] for rs in refs])
  as_tokens = cider.cider_d(hyps, refs)
  assert as_text[0] == as_tokens[0]
  np.testing.assert_array_equal(as_text[1], as_tokens[1])


def test_cider_d_idf_and_length_penalty():
  # One image: log(#images) = 0 makes every tf-idf weight 0.
  assert cider.cider_d(["a b c"], [["a b c"]])[0] == 0.0
  # The reference n-grams of image 0 occur in no other image's references, so
  # its weights are log(2) for all of them and cosine similarity is exact.
  refs = [["p q r s t"], ["a b c"]]
  assert cider.cider_d(["p q r s t", "x"], refs)[1][0] == pytest.approx(10.0)
  # Two tokens longer: every order's cosine is cut by the gaussian penalty.
  copy_longer = cider.cider_d(["p q r s t p q", "x"], refs)[1][0]
  assert copy_longer < 10 * math.exp(-4 / 72) + 1e-12


def test_cider_d_rejects_bad_input():
  with pytest.raises(ValueError, match="at least one reference"):
    cider.cider_d(["a"], [[]])
  with pytest.raises(ValueError, match="empty corpus"):
    cider.cider_d([], [])
  with pytest.raises(ValueError, match="1 hypotheses but 2"):
    cider.cider_d(["a"], [["a"], ["b"]])


# ----------------------------------------------------- task metrics


def test_vqa_accuracy_by_hand():
  r = metrics.vqa_accuracy(
      ["Red", " two ", "yes", "blue", "Large  Square"],
      ["red", "two", "no", "green", "large square"],
      ["color", "count", "exist", "color", "shape"])
  assert r["accuracy"] == pytest.approx(3 / 5) and r["count"] == 5
  assert r["qtype"] == {"color": {"accuracy": 0.5, "count": 2},
                        "count": {"accuracy": 1.0, "count": 1},
                        "exist": {"accuracy": 0.0, "count": 1},
                        "shape": {"accuracy": 1.0, "count": 1}}


def test_vqa_accuracy_rejects_empty_and_ragged_input():
  with pytest.raises(ValueError, match="nothing to score"):
    metrics.vqa_accuracy([], [], [])
  with pytest.raises(ValueError, match="2 predictions but 1 targets"):
    metrics.vqa_accuracy(["a", "b"], ["a"], ["t", "t"])
  with pytest.raises(ValueError, match="1 predictions but 2 targets"):
    metrics.vqa_accuracy(["a"], ["a"], ["t", "t"])


def test_ita_accuracy_by_hand():
  r = metrics.ita_accuracy(["yes", "Yes", "no", "maybe", "yes", " YES"],
                           ["yes", "no", "no", "yes", "no", "yes"])
  assert r == {"accuracy": pytest.approx(3 / 6), "count": 6,
               "yes_rate": pytest.approx(4 / 6),
               "invalid_rate": pytest.approx(1 / 6),
               "pos_accuracy": pytest.approx(2 / 3),
               "neg_accuracy": pytest.approx(1 / 3),
               "pos_count": 3, "neg_count": 3}


def test_ita_accuracy_edge_cases():
  r = metrics.ita_accuracy(["yes", "no"], ["yes", "yes"])
  assert r["pos_accuracy"] == 0.5 and math.isnan(r["neg_accuracy"])
  with pytest.raises(ValueError, match="'yes' or 'no'"):
    metrics.ita_accuracy(["yes"], ["true"])
  with pytest.raises(ValueError, match="nothing to score"):
    metrics.ita_accuracy([], [])


def test_caption_metrics_lowercase_whitespace_tokens():
  hyps, refs = caption_corpus(20, 30)
  shouting = [" ".join(w.upper() for w in h) + "  " for h in hyps]
  r = metrics.caption_metrics(shouting, [[" ".join(x) for x in rs]
                                         for rs in refs])
  assert set(r) == {"bleu4", "cider_d"}
  assert r["bleu4"] == pytest.approx(nltk_corpus_bleu(hyps, refs), abs=1e-9)
  assert r["cider_d"] == pytest.approx(coco_cider(hyps, refs)[0], abs=1e-9)


def test_mean_caption_scores_mappings_and_dataclasses():
  rows = [dict(precision=1.0, recall=0.5, f1=2 / 3, hallucination=0.0,
               v_strict=False, v_frac=0.75, parsed=True),
          dict(precision=0.5, recall=1.0, f1=2 / 3, hallucination=0.5,
               v_strict=False, v_frac=0.5, parsed=False),
          dict(precision=1.0, recall=1.0, f1=1.0, hallucination=0.0,
               v_strict=True, v_frac=1.0, parsed=True)]
  want = {"precision": 2.5 / 3, "recall": 2.5 / 3, "f1": (4 / 3 + 1) / 3,
          "hallucination": 0.5 / 3, "v_strict": 1 / 3, "v_frac": 2.25 / 3,
          "parse_rate": 2 / 3}
  assert metrics.mean_caption_scores(rows) == pytest.approx(want)
  objects = [CaptionScore(**r) for r in rows]
  assert metrics.mean_caption_scores(objects) == pytest.approx(want)
  with pytest.raises(ValueError, match="nothing to average"):
    metrics.mean_caption_scores([])
