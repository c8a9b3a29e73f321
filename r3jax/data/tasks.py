"""Task formatting: every example becomes one prefix + target token sequence.

  full   = <task> question... <sep> target... <eos>
  tokens = full[:-1], targets = full[1:], both right-padded to the task's max_len
  loss_mask is 1 exactly where `targets` holds a target word or the final <eos>.

Attention is causal over the whole sequence; the prompt is simply never
supervised. Tasks register themselves in TASKS; a task says how to draw one
training (question, target) pair from a world record and how to list all of a
record's evaluation items.

Bad records fail here with a ValueError that names the record (its "index"),
never later inside the model: a missing or empty text field, an empty
question or target, a word outside the vocabulary (texts are encoded with
`strict=True`; <unk> is for model output only) and a sequence longer than
config.tasks.<task>.max_len (nothing is truncated).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from r3jax.world.language import REL_WORDS
from r3jax.world.scene import scene_from_arrays
from r3jax.world.vqa import QTYPES, relation_span
from r3jax.world.vqa import caption_positions as scene_caption_positions
from r3jax.world.vqa import caption_trace as scene_caption_trace
from r3jax.world.vqa import position_questions as scene_position_questions
from r3jax.world.vqa import relation_trace as scene_relation_trace

Record = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  # (record, rng) -> (question or None, target)
  sample: Callable[[Record, np.random.Generator], tuple[str | None, str]] | None
  # record -> [(question or None, target-or-references, extra)]; None: the
  # task has its own evaluation (R3: r3jax.r3.loop)
  eval_items: Callable[[Record], list[tuple[str | None, Any, dict]]] | None
  # (tokenizer, max_len, context) -> (record, rng, index) -> training arrays,
  # for tasks that are more than one question and one target; `index` is the
  # example's position in the task's stream (None in the shared layout)
  formatter: Callable | None = None
  # the record's text fields the task reads (checked before formatting)
  fields: tuple[str, ...] = ()
  # the item types config.tasks.<task>.type_weights may name (sample then
  # takes the weights as a third argument)
  item_types: tuple[str, ...] = ()
  # context entries (r3jax.data.tasks.formatter's) `sample` takes as
  # keyword arguments
  sample_options: tuple[str, ...] = ()
  # the formatter returns all config.tasks.<task>.per_image rows of an image
  # at once (leading axis), coupled (r3jax.r3.grounded)
  grouped: bool = False
  # The world's scorer of its evaluation items: (task, predictions, items,
  # records) -> {metric: value} (r3jax.eval.evaluator); None: caption, VQA
  # and ITA, whose scorers the setups choose, or no evaluation.
  score: Callable | None = None
  # (batch_size, max_len) in config.all_tasks(); None: the built-ins, whose
  # defaults config.py lists.
  defaults: tuple[int, int] | None = None
  # Its prompts start with a token of its own, <name>; a task beyond the
  # built-ins gets one after the words (WordTokenizer.with_tasks). False:
  # its formatter uses another task's token.
  own_token: bool = True
  # A loss term added to the task's token cross-entropy: (logits, sub-batch)
  # -> (loss sum, correct-count sum, count), normalised with the tokens'
  # (r3jax.train.losses); None: cross-entropy alone.
  loss: Callable | None = None


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
  """Adds `task`: config.all_tasks(), the world's scorers and its prompt
  token follow (docs/extending.md)."""
  if task.name in TASKS:
    raise ValueError(f"task {task.name!r} is already registered")
  TASKS[task.name] = task
  return task


def unregister(name: str) -> None:
  TASKS.pop(name, None)


def get(name: str) -> Task:
  """The registered task `name`; the R3 tasks register when r3jax.r3 is
  imported (r3jax.config imports it)."""
  if name not in TASKS:
    raise KeyError(f"task {name!r} is not registered (known: {sorted(TASKS)}"
                   "; the R3 tasks register when r3jax.r3 is imported)")
  return TASKS[name]


def _caption_sample(r, rng, caption_positions=False, caption_trace=False,
                    world=None):
  """One of the record's captions; with caption_positions (config.data)
  each single object it lists followed by its grid column and row, with
  caption_trace each relation's two grid indices before its relation words
  (r3jax.world.vqa; `world` is the WorldConfig)."""
  caption = r["captions"][rng.integers(len(r["captions"]))]
  if not (caption_positions or caption_trace):
    return None, caption
  if world is None:
    raise ValueError("caption_positions and caption_trace need the world's "
                     "settings (the synthetic world's records only)")
  scene = scene_from_arrays(r["scene"], world)
  if caption_trace:
    caption = scene_caption_trace(caption, scene, world)
  if caption_positions:
    caption = scene_caption_positions(caption, scene, world)
  return None, caption


register(Task(
    "caption",
    sample=_caption_sample,
    eval_items=lambda r: [(None, list(r["captions"]), {})],
    fields=("captions",),
    sample_options=("caption_positions", "caption_trace", "world"),
))


def _vqa_sample(r, rng, type_weights=None, relation_questions="as_drawn",
                relation_answers="word", world=None, position_questions=0.0):
  """One of the record's questions: uniformly, or with probability in
  proportion to its type's weight (config.tasks.vqa.type_weights; types not
  named weigh 1). A record whose questions all weigh 0 is drawn uniformly.
  relation_questions="canonical" (config.data) rewrites a relation question
  to its canonical phrasing (canonical_relation); relation_answers="trace"
  puts the two objects' grid indices before a relation answer ("zero two
  yes", r3jax.world.vqa.relation_trace; `world` is the WorldConfig), and
  "restate" each after its object's description ("the circle zero the
  square two yes"). position_questions is the share of draws replaced by a
  position question about one of the record's objects ("the red circle ?"
  -> its column and row, "zero two"; r3jax.world.vqa.position_questions)."""
  if position_questions and rng.random() < position_questions:
    if world is None:
      raise ValueError("position_questions need the world's settings (the "
                       "synthetic world's records only)")
    options = scene_position_questions(
        scene_from_arrays(r["scene"], world), world)
    if options:
      return options[rng.integers(len(options))]
  n = len(r["vqa_questions"])
  if not type_weights:
    i = rng.integers(n)
  else:
    w = np.array([float(type_weights.get(t, 1.0)) for t in r["vqa_types"]])
    i = rng.choice(n, p=w / w.sum()) if w.sum() > 0 else rng.integers(n)
  question = r["vqa_questions"][i]
  if relation_questions == "canonical" and r["vqa_types"][i] == "relation":
    question = canonical_relation(question)
  answer = r["vqa_answers"][i]
  if relation_answers != "word" and r["vqa_types"][i] == "relation":
    answer = (f"{relation_trace(question, r, world, relation_answers)} "
              f"{answer}")
  return question, answer


RELATION_ANSWERS = ("word", "trace", "restate")


def relation_trace(question: str, record: Record, world,
                   relation_answers: str = "trace") -> str:
  """r3jax.world.vqa.relation_trace on the record's scene, restated with
  relation_answers="restate"."""
  if world is None:
    raise ValueError(f"relation_answers={relation_answers!r} needs the "
                     "world's settings (the synthetic world's records only)")
  return scene_relation_trace(
      question, scene_from_arrays(record["scene"], world), world,
      restate=relation_answers == "restate")


def canonical_relation(question: str) -> str:
  """"is A REL B ?" with the same answer and REL "left of" (or "above"):
  "is the circle to the right of the square ?" -> "is the square left of
  the circle ?"."""
  words = question.split()
  span = relation_span(words)
  if words[:1] != ["is"] or words[-1:] != ["?"] or span is None:
    raise ValueError(f"not a relation question: {question!r}")
  start, end = span
  rel, swap = REL_WORDS[tuple(words[start:end])]
  a, b = words[1:start], words[end:-1]
  if swap:
    a, b = b, a
  return " ".join(["is", *a, *(["left", "of"] if rel == "left" else
                               ["above"]), *b, "?"])


register(Task(
    "vqa",
    sample=_vqa_sample,
    eval_items=lambda r: [(q, a, {"qtype": t}) for q, a, t in zip(
        r["vqa_questions"], r["vqa_answers"], r["vqa_types"])],
    fields=("vqa_questions", "vqa_answers"),
    item_types=QTYPES,
    sample_options=("relation_questions", "relation_answers", "world",
                    "position_questions"),
))


def _ita_sample(r, rng):
  i = rng.integers(len(r["ita_captions"]))
  return r["ita_captions"][i], r["ita_labels"][i]


register(Task(
    "ita",
    sample=_ita_sample,
    eval_items=lambda r: [(c, l, {}) for c, l in zip(
        r["ita_captions"], r["ita_labels"])],
    fields=("ita_captions", "ita_labels"),
))


def formatter(name: str, tokenizer, max_len: int,
              context: Mapping[str, Any] | None = None,
              type_weights: Mapping[str, float] | None = None):
  """(record, rng) -> {tokens, targets, loss_mask, ...} for task `name`;
  context holds what the task needs beyond the record (R3: "world", "r3");
  type_weights, the draw weights of a record's items by type
  (config.tasks.<task>.type_weights). A bad record is a ValueError naming it
  (see the module doc)."""
  task = get(name)
  if type_weights and not task.item_types:
    raise ValueError(f"config.tasks.{name}.type_weights: the {name} task's "
                     "items have no types to weigh")
  options = {k: context[k] for k in task.sample_options
             if context and k in context}
  if type_weights:
    options["type_weights"] = dict(type_weights)
  sample = (functools.partial(task.sample, **options) if options
            else task.sample)
  if task.formatter is not None:
    if context is None:
      raise ValueError(f"task {name!r} needs the world and r3 settings")
    inner = task.formatter(tokenizer, max_len, context)
    # The R3 formatters encode reference captions leniently: check them here.
    check_words = task.fields
  else:
    def inner(record, rng, index=None):
      del index
      question, target = sample(record, rng)
      return format_sequence(tokenizer, name, question, target, max_len)
    check_words = ()

  def fmt(record, rng, index=None):
    try:
      check_texts(record, task.fields, tokenizer, check_words)
      return inner(record, rng, index)
    except ValueError as e:
      where = f"record {record['index']}" if "index" in record else "a record"
      raise ValueError(f"{where} ({name} task): {e}") from e
  return fmt


def check_texts(record: Record, fields: Sequence[str], tokenizer=None,
                vocab_fields: Sequence[str] = ()) -> None:
  """Each of `fields` is a non-empty list of non-empty texts; those in
  `vocab_fields` hold only vocabulary words."""
  for field in fields:
    if field not in record:
      raise ValueError(f"no text field {field!r} (the record has "
                       f"{sorted(record)})")
    texts = record[field]
    if isinstance(texts, str) or not len(texts):
      raise ValueError(f"field {field!r} must be a non-empty list of texts, "
                       f"got {texts!r}")
    for text in texts:
      if not isinstance(text, str):
        raise ValueError(f"field {field!r} holds a {type(text).__name__}, not "
                         f"a str: {text!r} (world_tfds.data_source decodes "
                         "the stored bytes)")
      if not text.strip():
        raise ValueError(f"field {field!r} holds an empty text: {texts!r}")
      if field in vocab_fields:
        tokenizer.encode(text, strict=True)


def prompt_ids(tokenizer, task: str, question: str | None,
               strict: bool = False) -> list[int]:
  """<task> question <sep>; `strict` rejects unknown words and an empty
  question (None: the task has none)."""
  if strict and question is not None and not question.strip():
    raise ValueError(f"{task} example has an empty question {question!r}")
  q = tokenizer.encode(question, strict=strict) if question else []
  return [tokenizer.task_id(task), *q, tokenizer.sep_id]


def format_sequence(tokenizer, task: str, question: str | None, target: str,
                    max_len: int) -> dict[str, np.ndarray]:
  """One training sequence; raises on an empty text, a word outside the
  vocabulary, or a sequence that does not fit `max_len`."""
  if not target.strip():
    raise ValueError(f"{task} example has an empty target {target!r} "
                     f"(question {question!r})")
  prompt = prompt_ids(tokenizer, task, question, strict=True)
  full = prompt + tokenizer.encode(target, strict=True) + [tokenizer.eos_id]
  if len(full) - 1 > max_len:
    raise ValueError(
        f"{task} example needs {len(full) - 1} tokens but "
        f"config.tasks.{task}.max_len is {max_len}: {question!r} -> {target!r}")
  n = len(full) - 1
  tokens = np.full(max_len, tokenizer.pad_id, np.int32)
  targets = np.full(max_len, tokenizer.pad_id, np.int32)
  tokens[:n] = full[:-1]
  targets[:n] = full[1:]
  loss_mask = np.zeros(max_len, np.float32)
  loss_mask[len(prompt) - 1:n] = 1.0
  return dict(tokens=tokens, targets=targets, loss_mask=loss_mask)


def format_prompt(tokenizer, task: str, question: str | None,
                  max_len: int) -> tuple[np.ndarray, int]:
  """Right-padded prompt for generation and its length."""
  prompt = prompt_ids(tokenizer, task, question, strict=True)
  if len(prompt) >= max_len:
    raise ValueError(f"{task} prompt of {len(prompt)} tokens leaves no room "
                     f"in config.tasks.{task}.max_len={max_len}")
  out = np.full(max_len, tokenizer.pad_id, np.int32)
  out[:len(prompt)] = prompt
  return out, len(prompt)
