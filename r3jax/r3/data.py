"""R3 training sequences: a draft, the reflection on it, the refined caption.

One sequence holds a whole reflect -> refine step, so that inference decodes
both stages in one pass over one KV cache (the draft is read once):

  <reflect> DRAFT <sep> REFLECTION <sep> REFINED <eos>    an edit
  <reflect> DRAFT <sep> no further edit needed <eos>       stop: no refine
  <refine>  DRAFT <sep> REFINED <eos>                      no-reflect ablation

`build` (and `build_direct`, for the last) lays these out for every data
source from a `Target`, what an edit oracle says of a draft: here the
verifier (`sequence`), on COCO the nearest reference caption
(r3jax.r3.real).

REFLECTION is `self_questions` questions about the draft answered from the
image, "Q ? A .", then one instruction (r3jax.world.edit), e.g.
  "how many small red circles are there ? two . replace a small red circle
   with two small red circles"
Tasks (registered in r3jax.data.tasks by r3jax.r3.tasks):
  reflect        the loss is on REFLECTION and the token that ends it
  refine         the loss is on REFINED <eos>; the reflection is context, and
                 the consistency term ties REFINED to the reflection's answers
                 (r3jax.r3.consistency)
  refine_direct  the <refine> format, loss on REFINED <eos>
Drafts are reference captions: for `reflect` unchanged with probability
`p_stop` (target: the stop string), otherwise with one corruption of a kind
drawn from `corruptions`; `refine` only sees such drafts that need an edit.
With on-policy drafts (r3jax.r3.drafts) a fraction of the examples use the
model's own recent caption instead, whatever its errors; a right one teaches
`reflect` to stop, and `refine` replaces it by a corrupted reference caption.
With config.r3.onpolicy_reflections, refine's on-policy examples also carry
the model's own reflection on its draft; when its instruction names an edit
the draft holds, refine learns to carry out that edit (as it must at test
time, where it reads the model's reflection), else the verifier's.

Consistency pairs (refine only; r3jax.r3.consistency): a word the reflection
commits to, and the word of REFINED that states the same thing. They come
from the instruction's new phrase ("... with two small red circles", "add a
large blue square": its count, size, colour and shape words, each paired with
the same word of that phrase in REFINED) and from the self-questions' answers
(paired with the caption word that answers them). Q = self_questions +
PHRASE_WORDS pairs, K answers, J words per answer:
  cons_src      [Q]      position whose logits predict the reflection's word
  cons_dst      [Q]      position whose logits predict the caption word
  cons_src_ids  [Q,K,J]  reflection words stating each answer (-1: none)
  cons_dst_ids  [Q,K,J]  caption words stating each answer ("one": a/an/one)
  cons_weight   [Q]      the coefficient; 0 for unused pairs
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from r3jax.world import edit as edit_lib
from r3jax.world.config import NUMBERS, WorldConfig
from r3jax.world.corrupt import available_corruptions, corrupt
from r3jax.world.facts import KindCount, Ref, resolve
from r3jax.world.language import _item_text, plural
from r3jax.world.scene import Scene, scene_from_arrays

_J = 3  # caption words per answer at most ("a", "an", "one")


def draft(record: Mapping[str, Any], rng: np.random.Generator,
          cfg: WorldConfig, options, stop_allowed: bool) -> tuple[Scene, str]:
  """(scene, draft caption) for one training sequence."""
  scene = scene_from_arrays(record["scene"], cfg)
  refs = record["captions"]
  caption = str(refs[rng.integers(len(refs))])
  kinds = [k for k in options.corruptions
           if k in available_corruptions(scene, cfg)]
  if (stop_allowed and rng.random() < options.p_stop) or not kinds:
    return scene, caption
  return scene, corrupt(scene, rng, cfg, kinds[rng.integers(len(kinds))])


def self_questions(text: str, scene: Scene, cfg: WorldConfig,
                   rng: np.random.Generator, n: int
                   ) -> list[tuple[str, str, tuple]]:
  """Up to n (question, true answer, key) about what the draft states: the
  count of a stated kind, or the colour of a stated (size, shape) that names
  one object of the scene. Keys say which caption word states the answer."""
  stated = []
  for s in edit_lib.read(text, cfg):
    if isinstance(s, edit_lib.Listing):
      stated += [i.fact for i in s.items if isinstance(i.fact, KindCount)]
  options = []
  for f in dict.fromkeys((f.size, f.color, f.shape) for f in stated):
    size, color, shape = f
    options.append((f"how many {size} {color} {plural(shape)} are there ?",
                    NUMBERS[scene.kind_counts.get(f, 0)], ("count", f)))
    i = resolve(Ref(size=size, shape=shape), scene)
    if i is not None:
      options.append((f"what color is the {size} {shape} ?",
                      scene.objects[i].color, ("color", (size, shape))))
  order = rng.permutation(len(options))[:n]
  return [options[i] for i in sorted(order)]


def _slot(refined: str, key: tuple, cfg: WorldConfig) -> int | None:
  """Word index in `refined` of the word that answers the question `key`."""
  words = refined.split()
  items = [i.fact for s in edit_lib.read(refined, cfg)
           if isinstance(s, edit_lib.Listing) for i in s.items
           if isinstance(i.fact, KindCount)]
  if key[0] == "count":
    hits = [f for f in items if (f.size, f.color, f.shape) == key[1]]
    offset = 0
  else:
    hits = [f for f in items if (f.size, f.shape) == key[1]]
    offset = 2
  if len(hits) != 1:
    return None
  phrase = _item_text(hits[0]).split()
  for i in range(len(words) - len(phrase) + 1):
    if words[i:i + len(phrase)] == phrase:
      return i + offset
  return None


PHRASE_WORDS = 4  # det size colour shape of an item in an instruction


def _answers(kind: str, cfg: WorldConfig) -> list[list[str]]:
  """The words that state each answer of one kind of slot."""
  if kind == "count":
    return [["a", "an", "one"] if n == 1 else [NUMBERS[n]]
            for n in range(1, cfg.numbers + 1)]
  if kind == "shape":
    return [[s, plural(s)] for s in cfg.shapes]
  return [[v] for v in (cfg.colors if kind == "color" else cfg.sizes)]


def num_answers(cfg: WorldConfig) -> int:
  return max(cfg.numbers, len(cfg.colors), len(cfg.shapes), len(cfg.sizes))


def reflection(questions, instruction: str) -> str:
  qa = " ".join(f"{q} {a} ." for q, a, _ in questions)
  return f"{qa} {instruction}" if qa else instruction


@dataclasses.dataclass(frozen=True)
class Target:
  """What an edit oracle says of a draft: the reflection to write (any
  self-questions, then the instruction or the stop string) and, unless it
  stops, the refined caption and the consistency pairs, given the positions
  where the reflection and REFINED start. The oracles: the verifier on the
  world (`sequence`), the nearest reference caption on real data
  (r3jax.r3.real)."""
  reflection: str
  stop: bool
  refined: str = ""
  consistency: Callable[[int, int], dict[str, np.ndarray]] | None = None


def build(tokenizer, task: str, draft: str, target: Target, max_len: int,
          encode: Callable[[str], list[int]] | None = None
          ) -> dict[str, np.ndarray]:
  """The training arrays of `task` (reflect or refine) for `draft` and its
  target, in the layout above; `encode` defaults to the tokenizer's."""
  encode = encode or tokenizer.encode
  prompt = [tokenizer.task_id("reflect")] + encode(draft) + [tokenizer.sep_id]
  reflect_ids = encode(target.reflection)
  if target.stop:
    return _arrays(tokenizer, task, [
        ("prompt", prompt), ("reflect", reflect_ids + [tokenizer.eos_id])],
        max_len, draft)
  parts = [("prompt", prompt), ("reflect", reflect_ids + [tokenizer.sep_id])]
  if task == "reflect":
    return _arrays(tokenizer, task, parts, max_len, draft)
  parts.append(("refine", encode(target.refined) + [tokenizer.eos_id]))
  out = _arrays(tokenizer, task, parts, max_len, draft)
  if target.consistency is not None:
    out.update(target.consistency(len(prompt),
                                  len(prompt) + len(reflect_ids) + 1))
  return out


def build_direct(tokenizer, draft: str, refined: str, max_len: int,
                 encode: Callable[[str], list[int]] | None = None
                 ) -> dict[str, np.ndarray]:
  """refine_direct's arrays: <refine> DRAFT <sep> REFINED <eos>."""
  encode = encode or tokenizer.encode
  parts = [("prompt", [tokenizer.task_id("refine")] + encode(draft) +
            [tokenizer.sep_id]),
           ("refine", encode(refined) + [tokenizer.eos_id])]
  return _arrays(tokenizer, "refine_direct", parts, max_len, draft)


def sequence(tokenizer, task: str, text: str, scene: Scene, cfg: WorldConfig,
             options, rng: np.random.Generator, max_len: int,
             own_reflection: str | None = None) -> dict[str, np.ndarray]:
  """The training arrays of one R3 task for the draft `text`, with the
  verifier as the edit oracle. For refine, `own_reflection` (the model's own
  reflection on the draft) replaces the verifier's when its instruction
  names an edit the caption holds (edit.from_instruction): REFINED is then
  the draft after that edit."""
  if task == "refine" and own_reflection is not None:
    out = _own_refine(tokenizer, text, scene, cfg, options, max_len,
                      own_reflection)
    if out is not None:
      return out
  edit = edit_lib.diagnose(text, scene, cfg)
  if task == "refine_direct":
    refined = edit_lib.apply(edit, text, scene, cfg) if edit else text
    return build_direct(tokenizer, text, refined, max_len)
  questions = self_questions(text, scene, cfg, rng, options.self_questions)
  instr = edit_lib.STOP if edit is None else edit.instruction
  # reflect needs no refined caption (build stops after the reflection).
  refined = ("" if edit is None or task == "reflect" else
             edit_lib.apply(edit, text, scene, cfg))
  return build(tokenizer, task, text, Target(
      reflection(questions, instr), stop=edit is None, refined=refined,
      consistency=lambda at, refine_at: _consistency(
          tokenizer, questions, instr, refined, cfg, options, at,
          refine_at)), max_len)


def _own_refine(tokenizer, text, scene, cfg, options, max_len, reflection
                ) -> dict[str, np.ndarray] | None:
  """refine on the model's own reflection, or None when its instruction
  names no edit of the draft, or when the sequence is too long (a rambling
  reflection: the verifier's is used instead)."""
  instruction = " ".join(reflection.rsplit(" . ", 1)[-1].split())
  named = edit_lib.from_instruction(instruction, text, cfg, scene)
  if named is None:
    return None
  refined = edit_lib.apply(named, text, scene, cfg)
  # Consistency: the instruction's new phrase against REFINED (the model's
  # self-questions, if any, are context).
  questions_words = len(reflection.split()) - len(instruction.split())
  target = Target(reflection, stop=False, refined=refined,
                  consistency=lambda at, refine_at: _consistency(
                      tokenizer, [], instruction, refined, cfg, options,
                      at + questions_words, refine_at))
  try:
    return build(tokenizer, "refine", text, target, max_len)
  except ValueError:
    return None


def _arrays(tokenizer, task, parts, max_len, text) -> dict[str, np.ndarray]:
  full = [t for _, ids in parts for t in ids]
  n = len(full) - 1
  if n > max_len:
    raise ValueError(f"{task} example needs {n} tokens but "
                     f"config.tasks.{task}.max_len is {max_len}: {text!r}")
  trained = {"reflect": "reflect", "refine": "refine",
             "refine_direct": "refine"}[task]
  mask_full = np.zeros(len(full), np.float32)
  start = 0
  for name, ids in parts:
    if name == trained:
      mask_full[start:start + len(ids)] = 1.0
    start += len(ids)
  tokens = np.full(max_len, tokenizer.pad_id, np.int32)
  targets = np.full(max_len, tokenizer.pad_id, np.int32)
  loss_mask = np.zeros(max_len, np.float32)
  tokens[:n], targets[:n], loss_mask[:n] = full[:-1], full[1:], mask_full[1:]
  return dict(tokens=tokens, targets=targets, loss_mask=loss_mask)


def _phrase_pairs(instruction: str, refined: str, cfg: WorldConfig
                  ) -> list[tuple[int, int, str]]:
  """(word index in the instruction, word index in REFINED, slot kind) for
  the new item phrase of an add / replace instruction found in REFINED."""
  words = instruction.split()
  if words[:1] == ["add"]:
    start = 1
  elif words[:1] == ["replace"] and "with" in words:
    start = words.index("with") + 1
  else:
    return []
  phrase = words[start:]
  if len(phrase) != PHRASE_WORDS or phrase[1] not in cfg.sizes:
    return []  # a relation clause, not an item
  out_words = refined.split()
  for i in range(len(out_words) - len(phrase) + 1):
    if out_words[i:i + len(phrase)] == phrase:
      return [(start + o, i + o, kind) for o, kind in
              enumerate(("count", "size", "color", "shape"))]
  return []


def _consistency(tokenizer, questions, instruction, refined, cfg, options,
                 reflect_at, refine_at) -> dict[str, np.ndarray]:
  q, k = options.self_questions + PHRASE_WORDS, num_answers(cfg)
  src = np.zeros(q, np.int32)
  dst = np.zeros(q, np.int32)
  src_ids = np.full((q, k, _J), -1, np.int32)
  dst_ids = np.full((q, k, _J), -1, np.int32)
  weight = np.zeros(q, np.float32)
  pairs = []  # (full index of the reflection word, word index in REFINED, kind)
  pos = reflect_at
  for question, _, key in questions:
    answer_at = pos + len(question.split())  # the question ends with "?"
    pos = answer_at + 2  # past the answer and "."
    slot = _slot(refined, key, cfg)
    if slot is not None:
      pairs.append((answer_at, slot, key[0]))
  pairs += [(pos + i, j, kind) for i, j, kind in
            _phrase_pairs(instruction, refined, cfg)]
  for n, (at, slot, kind) in enumerate(pairs):
    for a, words in enumerate(_answers(kind, cfg)):
      ids = [tokenizer.encode(w)[0] for w in words]
      src_ids[n, a, :len(ids)] = ids
      dst_ids[n, a, :len(ids)] = ids
    # Logits at position p predict token p + 1.
    src[n], dst[n] = at - 1, refine_at + slot - 1
    weight[n] = options.consistency
  return dict(cons_src=src, cons_dst=dst, cons_src_ids=src_ids,
              cons_dst_ids=dst_ids, cons_weight=weight)


def formatter(task: str, tokenizer, max_len: int, cfg: WorldConfig, options,
              drafts=None):
  """(record, rng, index) -> training arrays of an R3 task (see the module
  doc); with a DraftStore (r3jax.r3.drafts) its selected examples use the
  model's own draft."""
  def fmt(record, rng, index=None):
    text = own = None
    if drafts is not None and index is not None and task in drafts.batch and (
        drafts.selected(task, index)):
      scene = scene_from_arrays(record["scene"], cfg)
      text = drafts.get(task, index)
      if isinstance(text, list):  # [draft, the model's reflection on it]
        text, own = text
      if task != "reflect" and edit_lib.diagnose(text, scene, cfg) is None:
        text = own = None  # nothing to refine in a right draft: corrupt one
    if text is None:
      scene, text = draft(record, rng, cfg, options,
                          stop_allowed=task == "reflect")
    return sequence(tokenizer, task, text, scene, cfg, options, rng, max_len,
                    own)
  return fmt
