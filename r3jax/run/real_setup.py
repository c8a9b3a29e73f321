"""COCO Captions + VQAv2 as a run sees them (config.data.source="coco_vqa").

The same interface as the world (r3jax.run.source.Source): a tokenizer,
the model, per-task training records, evaluation records and scorers. From the
official files in config.data.manual_dir, built once into config.data.dir:

  caption  COCO images, target one of their captions (r3jax.data.coco);
  ita      COCO images with a caption and "yes", or another image's caption
           and "no" (see CaptionRecords), so the pairs are balanced;
  vqa      VQAv2 questions on COCO images, target the question's
           multiple_choice_answer (the most common of the 10 human answers);
           scored by the official VQA accuracy over the 10 answers
           (r3jax.eval.vqa_official), overall and by answer type.

Captions are scored by BLEU-4 and CIDEr-D against every reference, on
lowercase words without punctuation. The text
of both training splits (captions, questions, answers) trains a
SentencePiece vocabulary of config.data.vocab_size, saved next to the
datasets and reused by every later run with the same data settings.
Images are config.world.image_size pixels square (config.data.image_fit).
R3-SFT's reflect and refine targets come from the nearest reference caption
(r3jax.r3.real); R3-RL needs the world's verifier and is refused on real data
(config validation).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
from flax import nnx
from jax.experimental import multihost_utils

from r3jax import config as config_lib
from r3jax.data import coco, manual, sp_tokenizer, vqav2
from r3jax.eval import evaluator as evaluator_lib
from r3jax.eval import metrics as metrics_lib
from r3jax.eval import vqa_official
from r3jax.model import Model
from r3jax.r3 import real as r3_real
from r3jax.run import source


class Fit:
  """Texts cut to a number of tokens, so that no example overflows its task's
  max_len (real text has rare very long captions and questions; the world's
  never do). A cut text is the decoded prefix of its tokens."""

  def __init__(self, tokenizer, tasks_cfg: Mapping[str, Any]):
    self._tok = tokenizer
    self._lens = {name: t.max_len for name, t in tasks_cfg.items()}

  def __call__(self, text: str, task: str, room: int = 0) -> str:
    """`text` as the task's one text (question or target) beside `room`
    tokens of the other: at most max_len - 2 - room tokens (the task token
    and <sep> take two)."""
    if task not in self._lens:
      return text
    budget = self._lens[task] - 2 - room
    whole = self._tok.encode(text)
    ids, cut = whole, budget
    while len(ids) > budget and cut > 1:  # a decoded prefix may re-encode longer
      text = self._tok.decode(whole[:cut])
      ids, cut = self._tok.encode(text), cut - 1
    return text

  def tokens(self, text: str) -> int:
    return len(self._tok.encode(text))


class CaptionRecords:
  """COCO records with the caption and ITA task fields. Record i's ITA pairs
  are its caption i mod n with "yes" and, with "no", the same-position
  caption of image (i + 1 + crc32(i) mod (N - 1)) mod N: never i itself, a
  fixed partner so that evaluation is reproducible, spread over the split.
  With `fit`, caption targets (training) and ITA captions are cut to fit;
  without it captions stay whole (evaluation references)."""

  def __init__(self, source, fit: Fit, cut_captions: bool):
    self._source = source
    self._fit = fit
    self._cut = cut_captions
    self._room = max(fit.tokens(a) for a in ("yes", "no"))  # ITA's answer
    if len(source) < 2:
      raise ValueError(f"ITA needs at least 2 COCO images, the split has "
                       f"{len(source)}")

  def __len__(self) -> int:
    return len(self._source)

  def other(self, i: int) -> int:
    n = len(self._source)
    return (i + 1 + zlib.crc32(i.to_bytes(8, "little")) % (n - 1)) % n

  def __getitem__(self, i: int) -> dict[str, Any]:
    r = self._source[i]
    caps = list(r["captions"])
    neg = list(self._source[self.other(i)]["captions"])
    ita = [caps[i % len(caps)], neg[i % len(neg)]]
    return {"index": i, "image": r["image"], "image_id": r["image_id"],
            "captions": [self._fit(c, "caption") for c in caps]
                        if self._cut else caps,
            "ita_captions": [self._fit(c, "ita", self._room) for c in ita],
            "ita_labels": ["yes", "no"]}


class VqaRecords:
  """VQAv2 records with the vqa task fields (one question per record, cut
  to fit beside its answer) and the 10 human answers."""

  def __init__(self, source, fit: Fit):
    self._source = source
    self._fit = fit

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> dict[str, Any]:
    r = self._source[i]
    answer = r["multiple_choice_answer"]
    question = self._fit(r["question"], "vqa", self._fit.tokens(answer))
    return {"index": i, "image": r["image"], "image_id": r["image_id"],
            "vqa_questions": [question], "vqa_answers": [answer],
            "vqa_types": [r["answer_type"]], "answers": list(r["answers"])}


def score_captions(task, preds, items, records) -> dict[str, float]:
  """BLEU-4 and CIDEr-D on lowercase words with punctuation dropped (as the
  COCO caption evaluation's PTB tokenizer does)."""
  norm = lambda text: " ".join(r3_real.words(text))  # noqa: E731
  return metrics_lib.caption_metrics(
      [norm(p) for p in preds], [[norm(r) for r in refs]
                                 for _, _, refs, _ in items])


def score_vqa_official(task, preds, items, records) -> dict[str, float]:
  """The official VQA accuracy, overall and by answer type."""
  scores = collections.defaultdict(list)
  for pred, (i, _, _, extra) in zip(preds, items, strict=True):
    acc = vqa_official.accuracy(pred, records[i]["answers"])
    scores["accuracy"].append(acc)
    scores[f"type/{extra['qtype']}/accuracy"].append(acc)
  return {k: sum(v) / len(v) for k, v in scores.items()}


R3_TASKS = {"reflect", "refine", "refine_direct"}
SCORERS = {"caption": score_captions, "vqa": score_vqa_official,
           "ita": evaluator_lib.score_ita}


@dataclasses.dataclass
class RealWorld:
  config: ml_collections.ConfigDict
  coco: Any            # the prepared builders
  vqa: Any
  tokenizer: Any
  train_source: dict[str, Any]   # task -> records
  make_model: Callable[[nnx.Rngs], Model]
  world: Any = None    # no world: R3 targets come from references

  def records(self, split: str, max_examples: int
              ) -> dict[str, Sequence[Mapping[str, Any]]]:
    """Each task's first `max_examples` (all: -1) records of `split`."""
    tasks = config_lib.evaluated_tasks(self.config)
    fit = Fit(self.tokenizer, tasks)

    def first(source):
      n = len(source) if max_examples < 0 else min(max_examples, len(source))
      return [source[i] for i in range(n)]

    captions = None  # every task but vqa reads the caption records
    out = {}
    for task in tasks:
      if task == "vqa":
        out[task] = first(VqaRecords(_split(self.vqa, split), fit))
      else:
        if captions is None:
          captions = first(CaptionRecords(_split(self.coco, split), fit, False))
        out[task] = captions
    return out

  def task_context(self) -> dict[str, Any]:
    """What task formatters need beyond a record: the image size, and for
    R3 (r3jax.r3.real) its settings and the corruption vocabulary."""
    context = {"image_size": self.config.world.image_size,
               "r3": self.config.r3}
    r3_tasks = R3_TASKS & set(self.config.tasks)
    if r3_tasks:
      context["pool"] = r3_real.word_pool(self.train_source[min(r3_tasks)])
    return context

  def evaluator(self, setup, eval_cfg):
    records = self.records(eval_cfg.split, eval_cfg.max_examples)
    scored = {t: r for t, r in records.items() if t in SCORERS}
    loop = source.r3_loop_for(self.config, setup, self.tokenizer, None,
                              eval_cfg.batch_size)
    return source.Evaluation(evaluator_lib.Evaluator(
        setup, scored, self.tokenizer, config_lib.evaluated_tasks(self.config),
        eval_cfg.batch_size, SCORERS), loop, records.get("caption"))


def _split(builder, split: str):
  if split not in builder.info.splits:
    raise ValueError(f"{builder.name} has no {split!r} split (it has "
                     f"{sorted(builder.info.splits)}); set config.evals.split "
                     "/ config.final_eval.split (COCO's test split needs "
                     "config.data.karpathy, VQAv2 has none with answers)")
  return manual.data_source(builder, split)


def builders(config: ml_collections.ConfigDict):
  """(COCO, VQAv2) builders prepared from config.data.manual_dir."""
  d = config.data
  size = config.world.image_size
  coco_cfg = coco.coco_config(image_size=size, fit=d.image_fit,
                              year=d.coco_year, karpathy=d.karpathy,
                              max_per_split=d.max_per_split)
  vqa_cfg = vqav2.vqa_config(image_size=size, fit=d.image_fit,
                             max_per_split=d.max_per_split)
  return (coco.build(coco_cfg, d.dir, d.manual_dir),
          vqav2.build(vqa_cfg, d.dir, d.manual_dir))


def tokenizer_path(config, coco_builder, vqa_builder) -> str:
  return os.path.join(
      config.data.dir, "coco_vqa_text",
      f"{coco_builder.builder_config.name}_{vqa_builder.builder_config.name}"
      f"_v{config.data.vocab_size}.model")


def training_text(coco_builder, vqa_builder):
  """Every caption of COCO's train split, then every VQAv2 train question and
  its 10 answers."""
  for r in manual.data_source(coco_builder, "train"):
    yield from r["captions"]
  for r in manual.data_source(vqa_builder, "train"):
    yield r["question"]
    yield from r["answers"]


def _train_tokenizer(config, coco_builder, vqa_builder, path: str) -> None:
  if os.path.exists(path):
    return
  logging.info("training the SentencePiece vocabulary (%d) at %s",
               config.data.vocab_size, path)
  tok = sp_tokenizer.train(training_text(coco_builder, vqa_builder),
                           config.data.vocab_size)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tok.save(path)


def load(config: ml_collections.ConfigDict) -> RealWorld:
  """Builds the datasets and the vocabulary if missing (process 0 first, the
  others then reuse them)."""

  def build():
    coco_builder, vqa_builder = builders(config)
    path = tokenizer_path(config, coco_builder, vqa_builder)
    with manual.build_lock(config.data.dir):
      _train_tokenizer(config, coco_builder, vqa_builder, path)
    return coco_builder, vqa_builder, path

  if jax.process_index() == 0:
    coco_builder, vqa_builder, path = build()
  multihost_utils.sync_global_devices("r3jax coco_vqa datasets")
  if jax.process_index() != 0:
    coco_builder, vqa_builder, path = build()
  tokenizer = sp_tokenizer.SentencePieceTokenizer.load(path)
  mcfg = config_lib.model_config(config, tokenizer.vocab_size,
                                  config.world.image_size)
  fit = Fit(tokenizer, config.tasks)
  captions = CaptionRecords(_split(coco_builder, "train"), fit, True)
  train = {"caption": captions, "ita": captions,
           "vqa": VqaRecords(_split(vqa_builder, "train"), fit),
           **{t: captions for t in R3_TASKS}}
  return RealWorld(config, coco_builder, vqa_builder, tokenizer,
                   {t: train[t] for t in config.tasks},
                   lambda rngs: Model(mcfg, rngs=rngs))
