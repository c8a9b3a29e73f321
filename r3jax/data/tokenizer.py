"""Tokenizers: the protocol the model relies on and an exact word-level one.

The world's language is finite, so a word vocabulary round-trips every
sentence exactly; there is no subword noise between the verifier and the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Protocol

from r3jax.world import WorldConfig, vocabulary

PAD, EOS, SEP, UNK = "<pad>", "<eos>", "<sep>", "<unk>"
SPECIALS = (PAD, EOS, SEP, UNK)
TASKS = ("caption", "vqa", "ita", "reflect", "refine")


class Tokenizer(Protocol):

  @property
  def vocab_size(self) -> int: ...

  @property
  def pad_id(self) -> int: ...

  @property
  def eos_id(self) -> int: ...

  @property
  def sep_id(self) -> int: ...

  def task_id(self, name: str) -> int: ...

  def encode(self, text: str, strict: bool = False) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


class WordTokenizer:
  """Specials (<pad>=0, <eos>=1, <sep>=2, <unk>=3), task prompts, then words."""

  def __init__(self, words: Sequence[str], extra_tasks: Sequence[str] = ()):
    """`extra_tasks`: task names beyond TASKS whose prompt tokens follow the
    words (with_tasks), so that adding a task shifts no word's id."""
    extra = [f"<{t}>" for t in extra_tasks]
    tokens = list(SPECIALS) + [f"<{t}>" for t in TASKS] + list(words) + extra
    if len(set(tokens)) != len(tokens):
      raise ValueError("duplicate tokens in the vocabulary")
    if any(not w or any(c.isspace() for c in w) for w in words):
      raise ValueError("words must be non-empty and contain no whitespace")
    self.tokens = tuple(tokens)
    self._ids = {t: i for i, t in enumerate(tokens)}
    self._n_special = len(SPECIALS) + len(TASKS)
    self._n_words = len(words)
    self._tasks = (*TASKS, *extra_tasks)
    self._word_ids = {t: i for i, t in enumerate(tokens)
                      if self._n_special <= i < self._n_special + len(words)}

  def with_tasks(self, names: Sequence[str]) -> WordTokenizer:
    """This vocabulary with a prompt token for each task in `names` that
    has none, after every word (sorted by name): word and built-in ids stay
    as they are; the vocabulary grows by one id per added task."""
    new = sorted(set(names) - set(self._tasks))
    if not new:
      return self
    words = self.tokens[self._n_special:self._n_special + self._n_words]
    extra = [t for t in self._tasks if t not in TASKS]
    return WordTokenizer(words, extra_tasks=[*extra, *new])

  @classmethod
  def from_world(cls, cfg: WorldConfig) -> WordTokenizer:
    return cls(vocabulary(cfg))

  @property
  def vocab_size(self) -> int:
    return len(self.tokens)

  @property
  def pad_id(self) -> int:
    return self._ids[PAD]

  @property
  def eos_id(self) -> int:
    return self._ids[EOS]

  @property
  def sep_id(self) -> int:
    return self._ids[SEP]

  @property
  def unk_id(self) -> int:
    return self._ids[UNK]

  def task_id(self, name: str) -> int:
    if name not in self._tasks:
      raise KeyError(f"unknown task {name!r}; known: {self._tasks} (a task "
                     "with a token of its own: WordTokenizer.with_tasks)")
    return self._ids[f"<{name}>"]

  def encode(self, text: str, strict: bool = False) -> list[int]:
    """Ids of the whitespace-separated words of `text`.

    A word outside the vocabulary becomes <unk> (model output and free text);
    with `strict` (training and evaluation data) it is a ValueError naming
    the word, and so is a special token such as <eos> written in the text.
    """
    if not strict:
      return [self._ids.get(w, self.unk_id) for w in text.split()]
    ids = [self._word_ids.get(w, -1) for w in text.split()]
    if -1 in ids:
      bad = dict.fromkeys(w for w in text.split()
                          if w not in self._word_ids)
      raise ValueError(f"{', '.join(map(repr, bad))} not in the vocabulary "
                       f"({self._n_words} words of the "
                       f"world): {text!r}")
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    """Words up to the first <eos>; other specials are dropped except <unk>.

    <unk> stays visible (also for ids outside the vocabulary, e.g. from a
    padded output layer) so an unknown word cannot pass as a valid caption.
    """
    words, end = [], self._n_special + self._n_words
    for i in map(int, ids):
      if i == self.eos_id:
        break
      if (0 <= i < self._n_special and i != self.unk_id) or (
          end <= i < len(self.tokens)):  # an added task's token
        continue
      words.append(self.tokens[i] if 0 <= i < len(self.tokens) else UNK)
    return " ".join(words)

  def save(self, path: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
      json.dump({"tokens": list(self.tokens)}, f, indent=0)
    os.replace(tmp, path)  # readers never see a half-written file

  @classmethod
  def load(cls, path: str) -> WordTokenizer:
    with open(path) as f:
      tokens = json.load(f)["tokens"]
    n = len(SPECIALS) + len(TASKS)
    extra = [t[1:-1] for t in tokens[n:] if t.startswith("<") and
             t.endswith(">")]
    tok = cls(tokens[n:len(tokens) - len(extra)], extra_tasks=extra)
    if tok.tokens != tuple(tokens):
      raise ValueError(f"{path}: special tokens differ from {tok.tokens[:n]}")
    return tok
