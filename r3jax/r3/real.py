"""R3 on real captions (COCO): reflect targets from the nearest human caption.

On the world the verifier says exactly what a draft gets wrong. Real images
have only their human captions, so a draft's targets are built against the
reference caption nearest to it (the highest difflib word-matching ratio):

  words      lowercase alphanumeric words (punctuation dropped, as the COCO
             caption evaluation's PTB tokenizer does)
  reflect    the first span where the draft and that reference differ, as one
             instruction: "replace OLD with NEW", "remove OLD", "add NEW after
             W" or "add NEW at the start"; a draft equal to a reference gets
             the stop string "no further edit needed"
  refine     the draft with that one edit applied (after R rounds of single
             edits a draft has moved R spans towards its nearest reference)

Drafts are the model's own captions (config.r3.onpolicy_every: the targets
for what the model itself writes, which is what the loop is then run on) or,
for the other examples, a reference caption unchanged (with probability p_stop,
for reflect) or with one word-level corruption: a word replaced by a word from
the training captions' vocabulary, removed, or inserted. Sequences are laid
out as on the world (r3jax.r3.data).

What differs from the world:
- "Right" means equal to a human caption, not true of the image: an on-policy
  draft that is correct but worded differently still gets an edit towards
  its nearest reference, so stopping is learnt only from exact references;
  the false-stop and over-edit rates are not defined (no ground truth), and
  per-round scores are BLEU-4 and CIDEr-D against the references.
- No self-questions (they need the scene's facts).
- The consistency pair is the replaced word: for "replace OLD with NEW"
  (one word each) the reflect stage's choice between NEW and OLD where it
  writes NEW, and the refine stage's where the refined caption writes it,
  compared as on the world (r3jax.r3.consistency; the first piece of each
  word); other instructions carry no pair.
- R3-RL needs the verifier's rewards and is not available on real data.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from r3jax.r3 import data as r3_data
from r3jax.world import edit as edit_lib

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
  return _WORD.findall(text.lower())


def nearest(draft: Sequence[str], refs: Sequence[Sequence[str]]) -> list[str]:
  """The reference most similar to the draft (difflib ratio; first on ties)."""
  def ratio(ref):
    return difflib.SequenceMatcher(None, draft, ref, autojunk=False).ratio()
  return list(max(refs, key=ratio))


def first_edit(draft: Sequence[str], ref: Sequence[str]
               ) -> tuple[str, list[str], tuple[str, str] | None] | None:
  """(instruction, the draft with it applied, (old, new) for a one-word
  replacement) for the first span where the draft differs from `ref`, or
  None when they are equal."""
  matcher = difflib.SequenceMatcher(None, draft, ref, autojunk=False)
  for tag, i1, i2, j1, j2 in matcher.get_opcodes():
    if tag == "equal":
      continue
    old, new = list(draft[i1:i2]), list(ref[j1:j2])
    edited = list(draft[:i1]) + new + list(draft[i2:])
    if tag == "replace":
      pair = (old[0], new[0]) if len(old) == len(new) == 1 else None
      return f"replace {' '.join(old)} with {' '.join(new)}", edited, pair
    if tag == "delete":
      return f"remove {' '.join(old)}", edited, None
    where = f"after {draft[i1 - 1]}" if i1 else "at the start"
    return f"add {' '.join(new)} {where}", edited, None
  return None


def corrupt(ref: Sequence[str], rng: np.random.Generator,
            pool: Sequence[str]) -> list[str]:
  """`ref` with one word replaced (by a different pool word), removed (when
  it has more than one) or inserted (a pool word)."""
  out = list(ref)
  kind = rng.integers(3) if len(out) > 1 else rng.choice([0, 2])
  i = int(rng.integers(len(out)))
  word = str(pool[rng.integers(len(pool))])
  if kind == 0:
    while word == out[i] and len(set(pool)) > 1:
      word = str(pool[rng.integers(len(pool))])
    out[i] = word
  elif kind == 1:
    del out[i]
  else:
    out.insert(int(rng.integers(len(out) + 1)), word)
  return out


def _ids(tokenizer, ws: Sequence[str]) -> list[list[int]]:
  """Each word's pieces (SentencePiece splits at spaces, so their
  concatenation is the text's encoding)."""
  return [tokenizer.encode(w) for w in ws]


def _flat(pieces: Sequence[Sequence[int]]) -> list[int]:
  return [p for w in pieces for p in w]


def sequence(tokenizer, task: str, draft: Sequence[str],
             refs: Sequence[Sequence[str]], options, max_len: int
             ) -> dict[str, np.ndarray]:
  """The training arrays of one R3 task for the draft (words), with the
  nearest reference caption as the edit oracle (r3jax.r3.data.build)."""
  edit = first_edit(draft, nearest(draft, refs))
  text = " ".join(draft)

  def encode(t: str) -> list[int]:
    return _flat(_ids(tokenizer, t.split()))

  if task == "refine_direct":
    refined = " ".join(edit[1]) if edit else text
    return r3_data.build_direct(tokenizer, text, refined, max_len, encode)
  if edit is None:
    target = r3_data.Target(edit_lib.STOP, stop=True)
  else:
    instruction, refined, pair = edit
    instr_words = instruction.split()

    def consistency(reflect_at: int, refine_at: int):
      return _consistency(tokenizer, pair, instr_words,
                          _ids(tokenizer, instr_words), refined,
                          _ids(tokenizer, refined), reflect_at, refine_at,
                          options)

    target = r3_data.Target(instruction, stop=False,
                            refined=" ".join(refined),
                            consistency=consistency)
  return r3_data.build(tokenizer, task, text, target, max_len, encode)


def _consistency(tokenizer, pair, instr_words, instr_ids, refined, refined_ids,
                 reflect_at: int, refine_at: int, options
                 ) -> dict[str, np.ndarray]:
  """One pair (Q = 1, K = 2 answers: NEW, OLD; J = 1 piece) for a one-word
  replacement whose words start with different pieces; weight 0 otherwise."""
  src_ids = np.full((1, 2, 1), -1, np.int32)
  dst_ids = np.full((1, 2, 1), -1, np.int32)
  src, dst = np.zeros(1, np.int32), np.zeros(1, np.int32)
  weight = np.zeros(1, np.float32)
  if pair is not None:
    old, new = pair
    first = [tokenizer.encode(new)[0], tokenizer.encode(old)[0]]
    at_instr = instr_words.index("with") + 1  # NEW in "replace OLD with NEW"
    at_refined = next((i for i, w in enumerate(refined) if w == new), None)
    if first[0] != first[1] and at_refined is not None:
      src_ids[0, :, 0] = dst_ids[0, :, 0] = first
      # Logits at position p predict token p + 1.
      src[0] = reflect_at + len(_flat(instr_ids[:at_instr])) - 1
      dst[0] = refine_at + len(_flat(refined_ids[:at_refined])) - 1
      weight[0] = options.consistency
  return dict(cons_src=src, cons_dst=dst, cons_src_ids=src_ids,
              cons_dst_ids=dst_ids, cons_weight=weight)


def formatter(task: str, tokenizer, max_len: int, options,
              pool: Sequence[str], drafts=None):
  """(record, rng, index) -> training arrays of an R3 task on a caption
  record ("captions"); `pool` is the corruption vocabulary; with a
  DraftStore its selected examples use the model's own draft. Captions are
  cut to a word count that fits `max_len` (halved until the sequence fits)."""
  cap = max(4, (max_len - 12) // 5)

  def fmt(record: Mapping[str, Any], rng, index=None):
    refs = [w for w in (words(c) for c in record["captions"]) if w]
    if not refs:
      raise ValueError(f"no caption with words: {record['captions']!r}")
    own = None
    if drafts is not None and index is not None and task in drafts.batch and (
        drafts.selected(task, index)):
      own = words(drafts.get(task, index)) or None
    limit = cap
    while True:
      cut = [r[:limit] for r in refs]
      draft = own[:limit] if own else None
      if draft is not None and task != "reflect" and (
          first_edit(draft, nearest(draft, cut)) is None):
        draft = None  # nothing to refine in a draft equal to a reference
      if draft is None:
        ref = cut[rng.integers(len(cut))]
        stop = task == "reflect" and rng.random() < options.p_stop
        draft = list(ref) if stop else corrupt(ref, rng, pool)
        while not stop and first_edit(draft, nearest(draft, cut)) is None:
          draft = corrupt(ref, rng, pool)  # it spelt another reference
      try:
        return sequence(tokenizer, task, draft, cut, options, max_len)
      except ValueError:
        if limit <= 2:
          raise
        limit //= 2
  return fmt


def word_pool(records, n: int = 2000) -> list[str]:
  """The distinct words of the first `n` records' captions, sorted."""
  out = set()
  for i in range(min(n, len(records))):
    for c in records[i]["captions"]:
      out.update(words(c))
  if not out:
    raise ValueError("no caption words to corrupt with")
  return sorted(out)
