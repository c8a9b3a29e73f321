"""The world as a TFDS dataset: array_record files, read without TensorFlow.

Each (WorldConfig, split sizes, seed) gets a BuilderConfig named by a hash of
those parameters, so different worlds live in different directories and a
build is never reused for another world. Record i of a split is
`generate_example(world, split_seed(seed, split), i)` (shuffling is off; the
examples are already independent draws), so any record can be regenerated.

Text fields are `tfds.features.Tensor(shape=(n,), dtype=np.object_)`: this
serialises without TF (like `Text`/`Sequence(Text)`, which also work) and keeps
one fixed length per field. The reader hands them back as bytes;
`data_source` decodes them to lists of str.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from r3jax.data.tokenizer import WordTokenizer
from r3jax.world import WorldConfig, generate_example

VOCAB_FILE = "vocab.json"
TEXT_FIELDS = ("captions", "vqa_types", "vqa_questions", "vqa_answers",
               "ita_captions", "ita_labels")


@dataclasses.dataclass(eq=False)
class WorldBuilderConfig(tfds.core.BuilderConfig):
  world: WorldConfig | None = None
  split_sizes: tuple[tuple[str, int], ...] = ()
  seed: int = 0


def builder_config(world_cfg: WorldConfig, split_sizes: Mapping[str, int],
                   seed: int) -> WorldBuilderConfig:
  sizes = tuple(sorted((str(k), int(v)) for k, v in split_sizes.items()))
  params = json.dumps({"world": dataclasses.asdict(world_cfg),
                       "splits": sizes, "seed": int(seed)}, sort_keys=True)
  name = "w" + hashlib.sha256(params.encode()).hexdigest()[:12]
  return WorldBuilderConfig(name=name, description=params, world=world_cfg,
                            split_sizes=sizes, seed=int(seed))


def split_seed(seed: int, split: str) -> int:
  """Seeds of disjoint example streams, one per split."""
  digest = hashlib.sha256(f"{seed}/{split}".encode()).digest()
  return int.from_bytes(digest[:4], "little")


def to_record(example: Mapping[str, Any], index: int) -> dict[str, Any]:
  """generate_example's output in the dataset's flat feature layout."""
  vqa, ita = example["vqa"], example["ita"]
  return {
      "index": np.int64(index),
      "image": example["image"],
      "scene": dict(example["scene"]),
      "captions": list(example["captions"]),
      "vqa_types": [t for t, _, _ in vqa],
      "vqa_questions": [q for _, q, _ in vqa],
      "vqa_answers": [a for _, _, a in vqa],
      "ita_captions": [c for c, _ in ita],
      "ita_labels": [label for _, label in ita],
  }


class R3World(tfds.core.GeneratorBasedBuilder):
  """Rendered scenes with captions, VQA and ITA pairs; see the module doc."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = []  # every config is custom: see `builder_config`
  # TFDS finds this itself through importlib_resources, which is not installed.
  code_path = tfds.core.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config.world
    n, size = cfg.max_objects, cfg.image_size

    def text(k: int) -> tfds.features.Tensor:
      return tfds.features.Tensor(shape=(k,), dtype=np.object_)

    scene = {k: tfds.features.Tensor(shape=(n,), dtype=np.int32)
             for k in ("shape_id", "color_id", "size_id")}
    scene.update({k: tfds.features.Tensor(shape=(n,), dtype=np.float32)
                  for k in ("x", "y")})
    scene["num_objects"] = tfds.features.Tensor(shape=(), dtype=np.int32)
    features = {
        "index": tfds.features.Tensor(shape=(), dtype=np.int64),
        "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8,
                                       encoding="bytes"),
        "scene": tfds.features.FeaturesDict(scene),
        "captions": text(cfg.n_captions),
        "ita_captions": text(cfg.n_ita),
        "ita_labels": text(cfg.n_ita),
    }
    features.update({k: text(cfg.n_questions)
                     for k in ("vqa_types", "vqa_questions", "vqa_answers")})
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.builder_config.description,
        features=tfds.features.FeaturesDict(features),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, n)
            for split, n in self.builder_config.split_sizes}

  def _generate_examples(self, split: str, n: int):
    cfg = self.builder_config
    seed = split_seed(cfg.seed, split)
    for i in range(n):
      yield i, to_record(generate_example(cfg.world, seed, i), i)


def build(world_cfg: WorldConfig, data_dir: str,
          split_sizes: Mapping[str, int], seed: int) -> R3World:
  """The prepared builder; generates only if the dataset is not there yet."""
  builder = R3World(config=builder_config(world_cfg, split_sizes, seed),
                    data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()  # a no-op when the dataset already exists
  vocab = os.path.join(builder.data_dir, VOCAB_FILE)
  if not os.path.exists(vocab):
    WordTokenizer.from_world(world_cfg).save(vocab)
  return builder


class _Decoded:
  """Random access like the wrapped source, with text fields as list[str]
  and scalars as numpy scalars of their feature dtype (not python ints)."""

  def __init__(self, source):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = dict(self._source[index])
    for k in TEXT_FIELDS:
      record[k] = [v.decode() for v in record[k]]
    record["index"] = np.int64(record["index"])
    record["scene"] = dict(record["scene"],
                           num_objects=np.int32(record["scene"]["num_objects"]))
    return record

  def __repr__(self) -> str:
    return f"_Decoded({self._source!r})"


def data_source(builder: R3World, split: str) -> _Decoded:
  return _Decoded(builder.as_data_source(split))


def load_tokenizer(builder: R3World) -> WordTokenizer:
  return WordTokenizer.load(os.path.join(builder.data_dir, VOCAB_FILE))
