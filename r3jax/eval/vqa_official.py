"""The official VQA accuracy (GT-Vision-Lab VQA vqaEval.py, current master,
commit a013f00 "Fixed processing answers bug").

For a prediction and the 10 human answers of one question, the accuracy is
the mean over the 10 leave-one-out subsets of 9 answers of
min(#answers in the subset equal to the prediction / 3, 1). With m matches
that is (m * min((m-1)/3, 1) + (10-m) * min(m/3, 1)) / 10: 0, 0.3, 0.6, 0.9
and 1.0 for m = 0, 1, 2, 3, >= 4.

Normalisation follows the script exactly, quirks included:
- answers are normalised (`normalize`) only when the 10 human answers are not
  all the same string; otherwise the raw stripped prediction is compared,
  so "yes." scores 0 against ten "yes";
- that raw comparison is case-sensitive (`item['answer']==resAns`): "Yes"
  scores 0 against ten "yes". When the answers differ, normalisation
  lowercases both sides, so there matching is case-insensitive;
- contraction keys "Im", "Ive", "Id've", "I'dve" are capitalised while words
  are lowercased before the lookup, so "im" stays "im";
- "somebody'd" maps to "somebodyd" (sic);
- the period regex `(?!<=\\d)(\\.)(?!\\d)` is a lookahead typo: it removes
  every period not followed by a digit, at most 32 of them (re.UNICODE
  passed as `count`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't",
    "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've",
    "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3",
           "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
           "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_",
         "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
  """The script's processPunctuation: each mark is deleted where it touches a
  space (or anywhere, if the text has a digit,digit comma), else spaced."""
  out = text
  delete_all = _DIGIT_COMMA.search(text) is not None
  for p in PUNCT:
    if delete_all or p + " " in text or " " + p in text:
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _PERIOD.sub("", out, count=re.UNICODE)


def process_digit_article(text: str) -> str:
  """The script's processDigitArticle: lowercase, number words to digits,
  articles dropped, contractions restored."""
  words = [NUMBERS.get(w, w) for w in text.lower().split()]
  words = [w for w in words if w not in ARTICLES]
  return " ".join(CONTRACTIONS.get(w, w) for w in words)


def _clean(text: str) -> str:
  return text.replace("\n", " ").replace("\t", " ").strip()


def normalize(text: str) -> str:
  """The full answer normalisation."""
  return process_digit_article(process_punctuation(_clean(text)))


def accuracy(prediction: str, answers: Sequence[str]) -> float:
  """Official accuracy of one prediction against the human answers."""
  gts = [_clean(a) for a in answers]
  pred = _clean(prediction)
  if len(set(gts)) > 1:
    gts = [normalize(a) for a in gts]
    pred = normalize(pred)
  match = [g == pred for g in gts]
  m = sum(match)
  # Leaving out answer i leaves m - match[i] matches among the other 9.
  return sum(min((m - hit) / 3, 1.0) for hit in match) / len(gts)


def mean_accuracy(predictions: Sequence[str],
                  answers: Sequence[Sequence[str]]) -> float:
  """Mean official accuracy over questions (in [0, 1], not percent)."""
  if len(predictions) != len(answers):
    raise ValueError(f"{len(predictions)} predictions for {len(answers)} "
                     "questions")
  if not predictions:
    raise ValueError("no questions to score")
  return sum(map(accuracy, predictions, answers)) / len(predictions)
