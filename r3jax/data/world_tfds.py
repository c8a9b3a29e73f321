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

`build` checks a dataset it reuses: metadata that do not parse, a missing or
truncated split file, a record count or settings that differ from the
config, or a vocab.json that is not the world's vocabulary are a ValueError
naming the directory (delete it to rebuild). A directory holding other
versions or other worlds is left alone: each builds next to the others.
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

from r3jax import logs
from r3jax.data import manual
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
  world = dataclasses.asdict(world_cfg)
  if world["number_words"] is None:  # the worlds from before the field
    del world["number_words"]
  params = json.dumps({"world": world,
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


def _damaged(directory: str, problem: str) -> ValueError:
  return ValueError(f"the world dataset in {directory} {problem}; delete that "
                    "directory to rebuild it (or set config.data.dir to "
                    "another directory)")


_short = manual.short_error


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _check_prepared(builder: R3World) -> None:
  """Raises if the prepared files are not this config's complete dataset."""
  directory = builder.data_dir
  cfg = builder.builder_config
  try:
    with open(os.path.join(directory, "dataset_info.json")) as f:
      stored = json.load(f)
  except (OSError, ValueError) as e:
    raise _damaged(directory, f"has no readable dataset_info.json "
                              f"({_short(e)})") from e
  if stored.get("configDescription") != cfg.description:
    try:
      theirs = _flat(json.loads(stored.get("configDescription", "")))
    except ValueError:
      theirs = {}
    ours = _flat(json.loads(cfg.description))
    diff = {k: (theirs.get(k), v) for k, v in ours.items()
            if theirs.get(k) != v}
    raise _damaged(directory, "was built for other settings (stored, config): "
                              f"{diff}")
  for split, n in cfg.split_sizes:
    try:
      source = builder.as_data_source(split)
      if len(source) != n:
        raise ValueError(f"{len(source)} records, not {n}")
      source[0], source[n - 1]  # a truncated file fails to read these
    except Exception as e:  # noqa: BLE001 (TFDS and array_record raise many)
      raise _damaged(directory, f"has a bad {split!r} split ({_short(e)})"
                     ) from e


def build(world_cfg: WorldConfig, data_dir: str,
          split_sizes: Mapping[str, int], seed: int) -> R3World:
  """The prepared builder; generates only if the dataset is not there yet and
  checks one that is (see the module doc)."""
  cfg = builder_config(world_cfg, split_sizes, seed)
  directory = os.path.join(data_dir, R3World.name, cfg.name,
                           str(R3World.VERSION))
  existed = os.path.exists(directory)
  try:
    os.makedirs(data_dir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create the dataset directory {data_dir!r} "
                     f"({_short(e)}); set config.data.dir (or R3JAX_DATA_DIR)"
                     " to a writable directory") from e
  try:
    with manual.build_lock(data_dir):
      builder = R3World(config=cfg, data_dir=data_dir,
                        file_format="array_record")
      with logs.library_output(None if existed else
                               f"generating the world dataset at {directory}"):
        builder.download_and_prepare()  # a no-op when the dataset exists
  except Exception as e:  # noqa: BLE001 (TFDS raises many kinds)
    if not existed:
      raise
    raise _damaged(directory, f"cannot be read ({_short(e)})") from e
  _check_prepared(builder)
  vocab = os.path.join(builder.data_dir, VOCAB_FILE)
  with manual.build_lock(data_dir):
    if not os.path.exists(vocab):
      WordTokenizer.from_world(world_cfg).save(vocab)
  return builder


class _Decoded(manual.Decoded):
  """manual.Decoded with text fields as list[str] and scalars as numpy
  scalars of their feature dtype (not python ints)."""

  def decode(self, record: dict[str, Any]) -> dict[str, Any]:
    for k in TEXT_FIELDS:
      record[k] = [v.decode() for v in record[k]]
    record["index"] = np.int64(record["index"])
    record["scene"] = dict(record["scene"],
                           num_objects=np.int32(record["scene"]["num_objects"]))
    return record

  def __repr__(self) -> str:
    return f"_Decoded({self._source!r})"


def data_source(builder: R3World, split: str) -> _Decoded:
  return _Decoded(builder.as_data_source(split),
                  f"the {split!r} split in {builder.data_dir}")


def load_tokenizer(builder: R3World) -> WordTokenizer:
  """The dataset's vocabulary; a ValueError if vocab.json is unreadable or
  not the vocabulary of the builder's world."""
  path = os.path.join(builder.data_dir, VOCAB_FILE)
  try:
    tok = WordTokenizer.load(path)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise _damaged(builder.data_dir, f"has no readable {VOCAB_FILE} "
                                     f"({_short(e)})") from e
  want = WordTokenizer.from_world(builder.builder_config.world)
  if tok.tokens != want.tokens:
    extra = sorted(set(tok.tokens) ^ set(want.tokens))[:8]
    raise _damaged(builder.data_dir, f"has a {VOCAB_FILE} of "
                   f"{tok.vocab_size} tokens that is not the world's "
                   f"vocabulary of {want.vocab_size} (differing: {extra})")
  return tok
