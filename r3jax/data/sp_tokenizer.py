"""A SentencePiece subword tokenizer for real datasets (COCO, VQAv2).

Real captions and questions have an open vocabulary, so the word-level
tokenizer of the embedded world does not apply; instead a unigram SentencePiece
model is trained on the dataset's text when the dataset is built and saved
with it. The id layout is the one `WordTokenizer` has (<pad>=0, <eos>=1,
<sep>=2, <unk>=3, the task prompts at 4..8, then the learned pieces), so the
model and the task formatters cannot tell the two apart.

Design:
- Unigram rather than BPE: it is the model type of the T5/PaLI tokenizers the
  JAX vision-language lineage uses, and it accepts a soft vocabulary limit, so
  a tiny corpus trains too (BPE needs enough merges to fill `vocab_size`).
- Text is normalised with NFKC and case folding (`nmt_nfkc_cf`) and runs of
  whitespace are collapsed: decode returns lowercase, single-spaced text.
- The specials are control symbols: the text "<eos>" is segmented like any
  other text and never yields a special id.
- Training is deterministic: the whole corpus is read in order on one thread,
  so the same texts and `vocab_size` give byte-identical model files.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from r3jax.data.tokenizer import EOS, PAD, SEP, SPECIALS, TASKS, UNK

TASK_TOKENS = tuple(f"<{t}>" for t in TASKS)
LAYOUT = SPECIALS + TASK_TOKENS  # ids 0..8, as in WordTokenizer
_SPACE = "\u2581"  # SentencePiece's whitespace marker


class SentencePieceTokenizer:
  """Specials (<pad>=0, <eos>=1, <sep>=2, <unk>=3), task prompts, then pieces.

  Built from the serialized model proto (the bytes of a `.model` file), whose
  id layout is checked: a ValueError if it differs from `LAYOUT`.
  """

  def __init__(self, model_proto: bytes):
    self._proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    _check_layout(self._sp)
    self._n_special = len(LAYOUT)

  @property
  def model_proto(self) -> bytes:
    return self._proto

  @property
  def vocab_size(self) -> int:
    return self._sp.vocab_size()

  @property
  def pad_id(self) -> int:
    return LAYOUT.index(PAD)

  @property
  def eos_id(self) -> int:
    return LAYOUT.index(EOS)

  @property
  def sep_id(self) -> int:
    return LAYOUT.index(SEP)

  @property
  def unk_id(self) -> int:
    return LAYOUT.index(UNK)

  def task_id(self, name: str) -> int:
    if name not in TASKS:
      raise KeyError(f"unknown task {name!r}; known: {TASKS}")
    return LAYOUT.index(f"<{name}>")

  def encode(self, text: str, strict: bool = False) -> list[int]:
    """Piece ids of `text` (lowercased), without <bos> or <eos>.

    Pieces cover any text, so the vocabulary rejects nothing (a character
    never seen in training becomes <unk>) and `strict` (training and
    evaluation data) only rejects text that is empty after normalisation or
    that spells a special token such as <eos> (also as "<EOS>"); without
    `strict` such a token is plain text and never yields its special id.
    """
    if strict:
      norm = self._sp.normalize(text).replace(_SPACE, " ")
      if not norm.strip():
        raise ValueError(f"empty text: {text!r}")
      found = [t for t in LAYOUT if t in norm]
      if found:
        raise ValueError(f"text spells the special token(s) "
                         f"{', '.join(found)}: {text!r}")
    return self._sp.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    """Text up to the first <eos>; <pad>, <sep> and task prompts are dropped.

    <unk> and ids outside the vocabulary (e.g. from a padded output layer)
    decode to a standalone "<unk>" word, so an unknown token stays visible
    and cannot pass as a valid caption.
    """
    parts, run = [], []
    for i in map(int, ids):
      if i == self.eos_id:
        break
      if i == self.unk_id or not 0 <= i < self.vocab_size:
        parts += [self._sp.decode(run), UNK]
        run = []
      elif i >= self._n_special:
        run.append(i)
    parts.append(self._sp.decode(run))
    return " ".join(" ".join(parts).split())

  def save(self, path: str) -> None:
    """Writes the `.model` bytes, usable by any SentencePiece tool."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
      f.write(self._proto)
    os.replace(tmp, path)  # readers never see a half-written file

  @classmethod
  def load(cls, path: str) -> SentencePieceTokenizer:
    with open(path, "rb") as f:
      proto = f.read()
    try:
      return cls(proto)
    except (ValueError, RuntimeError) as e:
      raise ValueError(f"{path}: {e}") from e


def train(texts: Iterable[str], vocab_size: int,
          seed: int = 0) -> SentencePieceTokenizer:
  """A tokenizer trained on the non-blank `texts`, in memory.

  `vocab_size` (specials included) is an upper bound: a small corpus gives
  fewer pieces. Every character of the corpus gets a piece, so `vocab_size`
  must exceed the number of distinct characters plus 9. `seed` seeds
  SentencePiece's (process-global) generator; reading the whole corpus in
  order draws no random numbers, so the model does not depend on it.
  """
  if vocab_size <= len(LAYOUT):
    raise ValueError(f"vocab_size {vocab_size} leaves no room for pieces "
                     f"after the {len(LAYOUT)} special tokens")
  sentences = (t for t in texts if t.strip())
  first = next(sentences, None)
  if first is None:
    raise ValueError("cannot train a tokenizer on an empty corpus")
  spm.set_random_generator_seed(seed)
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=itertools.chain([first], sentences),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        pad_id=LAYOUT.index(PAD), pad_piece=PAD,
        eos_id=LAYOUT.index(EOS), eos_piece=EOS,
        unk_id=LAYOUT.index(UNK), unk_piece=UNK,
        bos_id=-1,
        # Control symbols fill the free ids in order: <sep>=2, tasks 4..8.
        control_symbols=[SEP, *TASK_TOKENS],
        normalization_rule_name="nmt_nfkc_cf",
        character_coverage=1.0,
        byte_fallback=False,
        # One thread, every sentence, in order: byte-identical models.
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2)
  except RuntimeError as e:
    raise ValueError(f"SentencePiece training failed: {e}") from e
  return SentencePieceTokenizer(model.getvalue())


def _check_layout(sp: spm.SentencePieceProcessor) -> None:
  """ValueError unless `sp` has `LAYOUT`, no <bos> and case folding."""
  n = min(sp.vocab_size(), len(LAYOUT))
  pieces = tuple(sp.id_to_piece(i) for i in range(n))
  kinds_ok = all(sp.is_unknown(i) if t == UNK else sp.is_control(i)
                 for i, t in enumerate(pieces))
  if pieces != LAYOUT or not kinds_ok or sp.bos_id() != -1:
    raise ValueError(f"the SentencePiece model's first ids are {pieces} "
                     f"(bos_id {sp.bos_id()}), not the control tokens "
                     f"{LAYOUT} without <bos>; train it with sp_tokenizer.train")
  if sp.normalize("A") != sp.normalize("a"):
    raise ValueError("the SentencePiece model does not fold case "
                     "(train it with sp_tokenizer.train)")
