"""The grounded consistency loss: understanding teaches generation.

For each fact a caption states, the matching VQA question about the same
image is asked in a sequence of its own, and the model's answer, with its
gradient stopped, is the teacher of the caption's word at that slot:

  fact (caption words)               question (VQA pathway)            answers
  item count   "two small red circles"  how many small red circles are there ?  counts
  item size    "a small red circle"     what size is the red circle ?           sizes
  item colour  "a small red circle"     what color is the small circle ?        colours
  item shape   "a small red circle"     what shape is the small red object ?    shapes
  relation     "the A is left of the B" is the A left of the B ?             yes/no

Every question has the form of the world's VQA questions
(r3jax/world/vqa.py), so the VQA pathway answers in distribution: counts are
asked of every listed item; sizes, colours and shapes only of one-object
items, and, given the scene (training, RL), only when the question's
description names one object of it, as VQA's attribute questions do;
relations only when both descriptions name one object. (A caption's total,
"there are two objects", has no VQA question: every count question names an
attribute.) For slot q, with the answers a of its kind:

  T_q(a) = the probability the VQA answer position gives to the words of
           answer a ("two"; "yes" for "left", "no" for "right"), over the
           kind's answers and, for counts, "zero", renormalised; gradient
           stopped
  t_q    = T_q restricted to the answers a caption word can state (not
           "zero") and renormalised
  s_q(a) = the probability the caption gives, at the slot, to the words
           stating a ("one": "a" / "an" / "one"), restricted the same way
  G      = sum_q w_q KL(t_q || s_q) / #{q: w_q > 0}
  w_q    = 1 when max_a T_q(a), over the answers a caption word can
           state, is >= min_conf (config.r3.ground_min_conf), else 0: a
           teacher sure the item is not there ("zero") leaves the slot out

G is 0 exactly when the caption commits to every stated fact with the
probabilities the VQA answer gives it, and grows with their disagreement;
the teacher is never moved (its rows carry no loss), so understanding
teaches generation and not the reverse.

A `ground` example is one image with 1 + Q rows (Q =
config.tasks.ground.per_image - 1): row 0 holds the caption (the student),
rows 1..Q one question each (up to Q slots, drawn when the caption has
more). The caption is the model's own for an on-policy share of examples
(config.r3.onpolicy_frac, from the first refresh on): its greedy draft, or,
for a share config.r3.ground_refined of those whose round edits, its refined
caption in the refine format, <reflect> DRAFT <sep> REFLECTION <sep>
REFINED; otherwise a reference caption, possibly corrupted
(r3jax.r3.data.draft). Per row:
  gnd_at       position whose logits predict the VQA answer (question rows)
  gnd_slot     position in row 0 whose logits predict the slot's word
  gnd_t_ids    [K, J] VQA answer words of each answer (-1: none)
  gnd_s_ids    [K, J] caption words stating each answer
  gnd_weight   1 for a question row in use, 0 otherwise
  gnd_min_conf the confidence gate
`agreement` scores a decoded caption by the same questions (the share of its
slots whose written word states the VQA argmax; 0 for a caption with no
checkable slot), an RL reward term (config.rl.agreement).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from r3jax.data import tasks as tasks_lib
from r3jax.world.config import NUMBERS, WorldConfig
from r3jax.world.facts import KindCount, Ref, resolve
from r3jax.world.scene import Scene, scene_from_arrays
from r3jax.world.language import LISTING_HEADS, REL_WORDS, plural, ref_text
from r3jax.world.verify import _item, parse_ref

J = 3  # words per answer at most ("a", "an", "one")
_NEG = -1e30
_OPPOSITE = {"left": "right", "right": "left", "above": "below",
             "below": "above"}


@dataclasses.dataclass(frozen=True)
class Slot:
  """One stated fact: the caption word at `word` (index in the caption's
  words) states answer `stated` of `teacher` / `student` (word lists per
  answer), which `question` asks the VQA pathway."""
  kind: str
  word: int
  question: str
  teacher: tuple[tuple[str, ...], ...]
  student: tuple[tuple[str, ...], ...]
  stated: int


def num_answers(cfg: WorldConfig) -> int:
  return max(cfg.numbers + 1, len(cfg.colors), len(cfg.shapes),
             len(cfg.sizes), 2)


def _counts(cfg: WorldConfig) -> tuple[tuple, tuple]:
  """Count answers 1..cfg.numbers (every count the vocabulary states) and
  "zero" (the teacher's only: no caption word states it)."""
  ns = range(1, cfg.numbers + 1)
  return (tuple((NUMBERS[n],) for n in ns) + (("zero",),),
          tuple(("a", "an", "one") if n == 1 else (NUMBERS[n],) for n in ns)
          + ((),))


def _pieces(words: list[str], lo: int, hi: int, sep: str):
  """(start, tokens) of words[lo:hi] split at `sep`."""
  out, start = [], lo
  for i in range(lo, hi + 1):
    if i == hi or words[i] == sep:
      if i > start:
        out.append((start, words[start:i]))
      start = i + 1
  return out


def _names_one(ref: Ref, scene: Scene | None) -> bool:
  return scene is None or resolve(ref, scene) is not None


def _item_slots(at: int, tokens: list[str], cfg: WorldConfig,
                scene: Scene | None) -> list[Slot]:
  fact = _item(tokens, cfg)
  if not isinstance(fact, KindCount):
    return []
  size, color, shape, n = fact.size, fact.color, fact.shape, fact.n
  t, s = _counts(cfg)
  out = [Slot("count", at, f"how many {size} {color} {plural(shape)} are "
              "there ?", t, s, n - 1)]
  if n != 1:
    return out
  for kind, values, offset, ref in (
      ("size", cfg.sizes, 1, Ref(color=color, shape=shape)),
      ("color", cfg.colors, 2, Ref(size=size, shape=shape)),
      ("shape", cfg.shapes, 3, Ref(size=size, color=color))):
    if not _names_one(ref, scene):
      continue  # VQA asks attributes of one object only
    answers = tuple((v,) for v in values)
    out.append(Slot(kind, at + offset, f"what {kind} is {ref_text(ref)} ?",
                    answers, answers, values.index(tokens[offset])))
  return out


def _relation_slots(at: int, tokens: list[str], subject: Ref | None,
                    cfg: WorldConfig, scene: Scene | None
                    ) -> tuple[list[Slot], Ref | None]:
  predicate, offset = tokens, 0
  if tokens[:1] == ["the"]:
    k = tokens.index("is") if "is" in tokens else len(tokens)
    subject, predicate, offset = (parse_ref(tokens[:k], cfg), tokens[k + 1:],
                                  k + 1)
  for words in REL_WORDS:
    if tuple(predicate[:len(words)]) != words:
      continue
    obj = parse_ref(predicate[len(words):], cfg)
    if subject is None or obj is None or not (
        _names_one(subject, scene) and _names_one(obj, scene)):
      return [], subject
    i = next(j for j, w in enumerate(words) if w in _OPPOSITE)
    stated = words[i]
    canon = "left" if stated in ("left", "right") else "above"
    phrase = "left of" if canon == "left" else "above"
    question = f"is {ref_text(subject)} {phrase} {ref_text(obj)} ?"
    student = ((canon,), (_OPPOSITE[canon],))
    return [Slot("relation", at + offset + i, question, (("yes",), ("no",)),
                 student, int(stated != canon))], subject
  return [], subject


def slots(caption: str, cfg: WorldConfig, scene: Scene | None = None
          ) -> list[Slot]:
  """The facts `caption` states that a VQA question can check, in order;
  given the scene, only those whose descriptions VQA would use there."""
  words = caption.split()
  out = []
  for lo, sentence in _pieces(words, 0, len(words), "."):
    head = next((h for h in LISTING_HEADS
                 if tuple(sentence[:len(h)]) == h), None)
    if head is not None:
      rest, at = sentence[len(head):], lo + len(head)
      if len(rest) >= 3 and rest[1] in ("object", "objects") and (
          rest[2] == ":"):
        at += 3  # past "N objects :" (a total: no VQA question asks it)
      for start, part in _pieces(words, at, lo + len(sentence), ","):
        for s2, item in _pieces(words, start, start + len(part), "and"):
          out += _item_slots(s2, item, cfg, scene)
    elif sentence[:1] == ["the"]:
      subject = None
      for start, part in _pieces(words, lo, lo + len(sentence), "and"):
        found, subject = _relation_slots(start, part, subject, cfg, scene)
        out += found
  return out


# --- training arrays -------------------------------------------------------


def _word_id(tokenizer, word: str) -> int | None:
  """The word's id, or None for a word outside the vocabulary (a world
  whose sizes and colours start with no vowel never writes "an")."""
  try:
    return tokenizer.encode(word, strict=True)[0]
  except ValueError:
    return None


def _ids(tokenizer, answers, k: int) -> np.ndarray:
  out = np.full((k, J), -1, np.int32)
  for a, words in enumerate(answers):
    ids = [i for i in (_word_id(tokenizer, w) for w in words) if i is not None]
    out[a, :len(ids)] = ids
  return out


def rows(tokenizer, student_ids: list[int], caption_at: int, caption: str,
         cfg: WorldConfig, n_questions: int, max_len: int,
         rng: np.random.Generator, min_conf: float = 0.0,
         scene: Scene | None = None) -> dict[str, np.ndarray]:
  """The 1 + n_questions rows of one example: `student_ids` is row 0's whole
  sequence, in which `caption`'s first word is token `caption_at`; up to
  n_questions of its slots (`slots` on `scene`; drawn when there are more)
  are asked."""
  k, n_ans = 1 + n_questions, num_answers(cfg)
  found = slots(caption, cfg, scene)
  if len(found) > n_questions:
    keep = np.sort(rng.permutation(len(found))[:n_questions])
    found = [found[i] for i in keep]
  if len(student_ids) - 1 > max_len:
    raise ValueError(f"ground example needs {len(student_ids) - 1} tokens but "
                     f"config.tasks.ground.max_len is {max_len}: {caption!r}")
  tokens = np.full((k, max_len), tokenizer.pad_id, np.int32)
  tokens[0, :len(student_ids) - 1] = student_ids[:-1]
  out = dict(tokens=tokens, targets=np.full((k, max_len), tokenizer.pad_id,
                                            np.int32),
             loss_mask=np.zeros((k, max_len), np.float32),
             gnd_at=np.zeros(k, np.int32), gnd_slot=np.zeros(k, np.int32),
             gnd_t_ids=np.full((k, n_ans, J), -1, np.int32),
             gnd_s_ids=np.full((k, n_ans, J), -1, np.int32),
             gnd_weight=np.zeros(k, np.float32),
             gnd_min_conf=np.full(k, min_conf, np.float32))
  for r, slot in enumerate(found, start=1):
    prompt = tasks_lib.prompt_ids(tokenizer, "vqa", slot.question, strict=True)
    if len(prompt) > max_len:
      raise ValueError(f"the question {slot.question!r} needs {len(prompt)} "
                       f"tokens; config.tasks.ground.max_len is {max_len}")
    tokens[r, :len(prompt)] = prompt
    # Logits at position p predict token p + 1.
    out["gnd_at"][r] = len(prompt) - 1
    out["gnd_slot"][r] = caption_at + slot.word - 1
    out["gnd_t_ids"][r] = _ids(tokenizer, slot.teacher, n_ans)
    out["gnd_s_ids"][r] = _ids(tokenizer, slot.student, n_ans)
    out["gnd_weight"][r] = 1.0
  return out


def formatter(tokenizer, max_len: int, context: Mapping[str, Any]):
  """(record, rng, index) -> a ground example (see the module doc)."""
  from r3jax.r3 import data as r3_data
  cfg, options = context.get("world"), context["r3"]
  if cfg is None:
    raise ValueError("the ground task asks the world's VQA questions; it "
                     "needs the embedded world (config.data.source='world')")
  n_questions = context["rows"] - 1
  drafts = context.get("drafts")

  def fmt(record, rng, index=None):
    own = None
    scene = scene_from_arrays(record["scene"], cfg)
    if drafts is not None and index is not None and "ground" in drafts.batch \
        and drafts.selected("ground", index):
      own = drafts.get("ground", index)
    if isinstance(own, list) and len(own) == 3:  # [draft, reflection, refined]
      draft, reflection, refined = own
      prefix = ([tokenizer.task_id("reflect")] + tokenizer.encode(draft) +
                [tokenizer.sep_id] + tokenizer.encode(reflection) +
                [tokenizer.sep_id])
      ids = prefix + tokenizer.encode(refined) + [tokenizer.eos_id]
      return rows(tokenizer, ids, len(prefix), refined, cfg, n_questions,
                  max_len, rng, options.ground_min_conf, scene)
    caption = own if isinstance(own, str) else r3_data.draft(
        record, rng, cfg, options, stop_allowed=True)[1]
    prefix = tasks_lib.prompt_ids(tokenizer, "caption", None)
    ids = prefix + tokenizer.encode(caption) + [tokenizer.eos_id]
    return rows(tokenizer, ids, len(prefix), caption, cfg, n_questions,
                max_len, rng, options.ground_min_conf, scene)
  return fmt


# --- the loss --------------------------------------------------------------


def _restricted(logp_NxV: jax.Array, ids_NxKxJ: jax.Array) -> jax.Array:
  """log of each answer's summed probability (-inf-like for none), [N, K]."""
  flat = ids_NxKxJ.reshape(ids_NxKxJ.shape[0], -1)
  lp = jnp.take_along_axis(logp_NxV, jnp.maximum(flat, 0), axis=-1)
  lp = jnp.where(flat >= 0, lp, _NEG).reshape(ids_NxKxJ.shape)
  return jax.nn.logsumexp(lp, axis=-1)


def _normalised(lp: jax.Array, valid: jax.Array) -> jax.Array:
  lp = jnp.where(valid, lp, _NEG)
  return lp - jax.nn.logsumexp(lp, axis=-1, keepdims=True)


def terms(logits_BxLxV: jax.Array, b: Mapping[str, jax.Array]
          ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per question row (all rows but each image's row 0), flattened:
  (KL(t || s), its weight w, whether s's most probable answer is t's)."""
  n_img = b["image"].shape[0]
  rows_, length, vocab = logits_BxLxV.shape
  k = rows_ // n_img
  logp = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
  logp = logp.reshape(n_img, k, length, vocab)
  field = lambda name: b[name].reshape(n_img, k, *b[name].shape[1:])[:, 1:]  # noqa: E731
  at, slot = field("gnd_at"), field("gnd_slot")          # [N, Q]
  q = k - 1
  teacher_lp = jnp.take_along_axis(logp[:, 1:], at[..., None, None],
                                   axis=2)[:, :, 0]      # [N, Q, V]
  student_lp = jnp.take_along_axis(logp[:, :1], slot[..., None, None],
                                   axis=2)[:, :, 0]      # [N, Q, V]
  t_ids = field("gnd_t_ids").reshape(n_img * q, *b["gnd_t_ids"].shape[1:])
  s_ids = field("gnd_s_ids").reshape(n_img * q, *b["gnd_s_ids"].shape[1:])
  t_valid = t_ids.max(-1) >= 0
  valid = t_valid & (s_ids.max(-1) >= 0)
  t_lp = jax.lax.stop_gradient(
      _restricted(teacher_lp.reshape(n_img * q, vocab), t_ids))
  # The gate reads the teacher over all its answers ("zero" included): the
  # largest probability it gives an answer a caption word can state.
  conf = jnp.where(valid, jnp.exp(_normalised(t_lp, t_valid)), 0.0).max(-1)
  t = _normalised(t_lp, valid)
  s = _normalised(_restricted(student_lp.reshape(n_img * q, vocab), s_ids),
                  valid)
  p = jnp.where(valid, jnp.exp(t), 0.0)
  kl = jnp.sum(jnp.where(valid, p * (t - s), 0.0), axis=-1)
  confident = conf >= field("gnd_min_conf").reshape(-1)
  w = field("gnd_weight").reshape(-1) * confident.astype(jnp.float32)
  agree = (jnp.argmax(jnp.where(valid, s, _NEG), -1) ==
           jnp.argmax(jnp.where(valid, t, _NEG), -1)).astype(jnp.float32)
  return kl, w, agree


def sums(logits_BxLxV: jax.Array, b: Mapping[str, jax.Array]
         ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(sum_q w_q KL_q, #agreeing slots in use, #slots in use)."""
  kl, w, agree = terms(logits_BxLxV, b)
  used = (w > 0).astype(jnp.float32)
  return jnp.sum(w * kl), jnp.sum(used * agree), jnp.sum(used)


# --- the RL reward term ----------------------------------------------------


def agreement(answer_fn, tokenizer, captions: Sequence[str],
              cfg: WorldConfig, scenes: Sequence[Scene] | None = None
              ) -> np.ndarray:
  """Per caption, the share of its checkable slots (`slots`, on its scene
  when given) whose written answer is the VQA pathway's (argmax over the
  slot's answers, "zero" included for counts); 0 for a caption that states
  nothing checkable (nothing it says is confirmed).
  `answer_fn(rows, questions)` -> [n, V] logits of the VQA answer position
  of `questions[i]` about caption rows[i]'s image."""
  found = [slots(c, cfg, None if scenes is None else scenes[i])
           for i, c in enumerate(captions)]
  rows_, questions = [], []
  for i, ss in enumerate(found):
    for s in ss:
      rows_.append(i)
      questions.append(s.question)
  out = np.zeros(len(captions), np.float64)
  if not questions:
    return out
  logits = np.asarray(answer_fn(rows_, questions), np.float64)
  hits = np.zeros(len(captions))
  k = 0
  for i, ss in enumerate(found):
    for s in ss:
      ids = [[i for i in (_word_id(tokenizer, w) for w in words)
              if i is not None] for words in s.teacher]
      scores = [max((logits[k][j] for j in a), default=-np.inf) for a in ids]
      hits[i] += int(np.argmax(scores) == s.stated)
      k += 1
    if ss:
      out[i] = hits[i] / len(ss)
  return out
