"""VQAv2 from the official files in a manual directory (no download).

Layout of `manual_dir`:
  v2_OpenEnded_mscoco_{train,val}2014_questions.json
  v2_mscoco_{train,val}2014_annotations.json
  {train,val}2014/COCO_{train,val}2014_%012d.jpg
Splits train and validation (test-dev/test have no public answers). One
record per question, ordered by (image id, question id); each carries its
image, so an image with k questions is stored k times (decoded once).
Score predictions with r3jax.eval.vqa_official. Images: see r3jax.data.jpeg.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from r3jax.data import jpeg, manual

N_ANSWERS = 10
FOLDERS = {"train": "train2014", "validation": "val2014"}


@dataclasses.dataclass(eq=False)
class VqaConfig(tfds.core.BuilderConfig):
  image_size: int = 64
  fit: str = "crop"
  max_per_split: int = 0  # 0: every question


def vqa_config(image_size: int = 64, fit: str = "crop",
               max_per_split: int = 0) -> VqaConfig:
  params = dict(image_size=image_size, fit=fit, max_per_split=max_per_split)
  name, text = manual.config_name("v", params)
  return VqaConfig(name=name, description=text, **params)


def read_split(manual_dir: str, split: str) -> list[dict]:
  """Questions joined with their annotations, by (image id, question id)."""
  folder = FOLDERS[split]
  qs = manual.load_json(
      manual_dir, f"v2_OpenEnded_mscoco_{folder}_questions.json")["questions"]
  anns = manual.load_json(
      manual_dir, f"v2_mscoco_{folder}_annotations.json")["annotations"]
  by_id = {a["question_id"]: a for a in anns}
  out = []
  for q in qs:
    a = by_id.get(q["question_id"])
    if a is None:
      raise ValueError(f"VQAv2 {split} question {q['question_id']} has no "
                       "annotation")
    answers = [x["answer"] for x in a["answers"]]
    if len(answers) != N_ANSWERS:
      raise ValueError(f"VQAv2 {split} question {q['question_id']} has "
                       f"{len(answers)} answers, not {N_ANSWERS}")
    out.append({"question_id": q["question_id"], "image_id": q["image_id"],
                "question": q["question"], "answers": answers,
                "multiple_choice_answer": a["multiple_choice_answer"],
                "answer_type": a["answer_type"],
                "question_type": a["question_type"]})
  return sorted(out, key=lambda r: (r["image_id"], r["question_id"]))


class VqaV2(tfds.core.GeneratorBasedBuilder):
  """VQAv2 questions with their image and 10 answers; see the module doc."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = []  # every config is custom: see `vqa_config`
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  code_path = tfds.core.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.builder_config.description,
        features=tfds.features.FeaturesDict({
            "question_id": tfds.features.Tensor(shape=(), dtype=np.int64),
            "image_id": tfds.features.Tensor(shape=(), dtype=np.int64),
            "image": tfds.features.Tensor(shape=(size, size, 3),
                                          dtype=np.uint8, encoding="bytes"),
            "question": text,
            "answers": tfds.features.Tensor(shape=(N_ANSWERS,),
                                            dtype=np.object_),
            "multiple_choice_answer": text,
            "answer_type": text,
            "question_type": text,
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    limit = self.builder_config.max_per_split
    out = {}
    for split in FOLDERS:
      records = read_split(root, split)
      out[split] = self._generate_examples(root, split,
                                           records[:limit or None])
    return out

  def _generate_examples(self, root: str, split: str, records) -> Iterator:
    cfg = self.builder_config
    folder = FOLDERS[split]
    last_id, image = None, None
    for r in records:
      if r["image_id"] != last_id:
        name = f"COCO_{folder}_{r['image_id']:012d}.jpg"
        image = jpeg.load_image(manual.image_path(root, folder, name),
                                cfg.image_size, cfg.fit)
        last_id = r["image_id"]
      yield r["question_id"], dict(
          r, question_id=np.int64(r["question_id"]),
          image_id=np.int64(r["image_id"]), image=image)


def build(cfg: VqaConfig, data_dir: str, manual_dir: str) -> VqaV2:
  return manual.build(VqaV2, cfg, data_dir, manual_dir)
