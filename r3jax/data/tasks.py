"""Task formatting: every example becomes one prefix + target token sequence.

  full   = <task> question... <sep> target... <eos>
  tokens = full[:-1], targets = full[1:], both right-padded to the task's max_len
  loss_mask is 1 exactly where `targets` holds a target word or the final <eos>.

Attention is causal over the whole sequence; the prompt is simply never
supervised. Tasks register themselves in TASKS; a task says how to draw one
training (question, target) pair from a world record and how to list all of a
record's evaluation items.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Record = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  # (record, rng) -> (question or None, target)
  sample: Callable[[Record, np.random.Generator], tuple[str | None, str]]
  # record -> [(question or None, target-or-references, extra)]
  eval_items: Callable[[Record], list[tuple[str | None, Any, dict]]]


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
  if task.name in TASKS:
    raise ValueError(f"task {task.name!r} is already registered")
  TASKS[task.name] = task
  return task


register(Task(
    "caption",
    sample=lambda r, rng: (None, r["captions"][rng.integers(
        len(r["captions"]))]),
    eval_items=lambda r: [(None, list(r["captions"]), {})],
))


def _vqa_sample(r, rng):
  i = rng.integers(len(r["vqa_questions"]))
  return r["vqa_questions"][i], r["vqa_answers"][i]


register(Task(
    "vqa",
    sample=_vqa_sample,
    eval_items=lambda r: [(q, a, {"qtype": t}) for q, a, t in zip(
        r["vqa_questions"], r["vqa_answers"], r["vqa_types"])],
))


def _ita_sample(r, rng):
  i = rng.integers(len(r["ita_captions"]))
  return r["ita_captions"][i], r["ita_labels"][i]


register(Task(
    "ita",
    sample=_ita_sample,
    eval_items=lambda r: [(c, l, {}) for c, l in zip(
        r["ita_captions"], r["ita_labels"])],
))


def prompt_ids(tokenizer, task: str, question: str | None) -> list[int]:
  q = tokenizer.encode(question) if question else []
  return [tokenizer.task_id(task), *q, tokenizer.sep_id]


def format_sequence(tokenizer, task: str, question: str | None, target: str,
                    max_len: int) -> dict[str, np.ndarray]:
  """One training sequence; raises if it does not fit `max_len`."""
  prompt = prompt_ids(tokenizer, task, question)
  full = prompt + tokenizer.encode(target) + [tokenizer.eos_id]
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
  prompt = prompt_ids(tokenizer, task, question)
  if len(prompt) >= max_len:
    raise ValueError(f"{task} prompt of {len(prompt)} tokens leaves no room "
                     f"in config.tasks.{task}.max_len={max_len}")
  out = np.full(max_len, tokenizer.pad_id, np.int32)
  out[:len(prompt)] = prompt
  return out, len(prompt)
