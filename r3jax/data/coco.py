"""COCO Captions from the official files in a manual directory (no download).

Layout of `manual_dir` (2014; for 2017 replace the year):
  annotations/captions_train2014.json, annotations/captions_val2014.json
  train2014/<file_name>, val2014/<file_name>
  dataset_coco.json   (only with karpathy=True)
Splits: without Karpathy, train and validation are the official ones. With
Karpathy (dataset_coco.json), train = its "train" + "restval" images, and
validation / test are its "val" / "test" images, each found under its
"filepath" folder. Records are ordered by image id.

Each image keeps `n_captions` captions: its first ones in file order,
repeated cyclically when it has fewer. Images: see r3jax.data.jpeg.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from r3jax.data import jpeg, manual

KARPATHY_FILE = "dataset_coco.json"
KARPATHY_SPLITS = {"train": ("train", "restval"), "validation": ("val",),
                   "test": ("test",)}


@dataclasses.dataclass(eq=False)
class CocoConfig(tfds.core.BuilderConfig):
  image_size: int = 64
  fit: str = "crop"
  n_captions: int = 5
  year: int = 2014
  karpathy: bool = False
  max_per_split: int = 0  # 0: every image


def coco_config(image_size: int = 64, fit: str = "crop", n_captions: int = 5,
                year: int = 2014, karpathy: bool = False,
                max_per_split: int = 0) -> CocoConfig:
  params = dict(image_size=image_size, fit=fit, n_captions=n_captions,
                year=year, karpathy=karpathy, max_per_split=max_per_split)
  name, text = manual.config_name("c", params)
  return CocoConfig(name=name, description=text, **params)


def official_images(manual_dir: str, split: str, year: int
                    ) -> list[tuple[int, str, list[str]]]:
  """(image id, image path, captions) of an official split, by image id."""
  folder = {"train": "train", "validation": "val"}[split] + str(year)
  data = manual.load_json(manual_dir,
                          os.path.join("annotations",
                                       f"captions_{folder}.json"))
  caps = collections.defaultdict(list)
  for a in data["annotations"]:
    caps[a["image_id"]].append(a["caption"].strip())
  return [(im["id"], os.path.join(folder, im["file_name"]), caps[im["id"]])
          for im in sorted(data["images"], key=lambda im: im["id"])]


def karpathy_images(manual_dir: str, split: str
                    ) -> list[tuple[int, str, list[str]]]:
  """(image id, image path, captions) of a Karpathy split, by image id."""
  data = manual.load_json(manual_dir, KARPATHY_FILE)
  images = [im for im in data["images"]
            if im["split"] in KARPATHY_SPLITS[split]]
  return [(im["cocoid"], os.path.join(im["filepath"], im["filename"]),
           [s["raw"].strip() for s in im["sentences"]])
          for im in sorted(images, key=lambda im: im["cocoid"])]


def fixed_captions(captions: list[str], n: int, image_id: int) -> list[str]:
  if not captions:
    raise ValueError(f"COCO image {image_id} has no captions")
  return [captions[i % len(captions)] for i in range(n)]


class CocoCaptions(tfds.core.GeneratorBasedBuilder):
  """COCO images with captions; see the module doc."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = []  # every config is custom: see `coco_config`
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  code_path = tfds.core.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    size = cfg.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=cfg.description,
        features=tfds.features.FeaturesDict({
            "image_id": tfds.features.Tensor(shape=(), dtype=np.int64),
            "image": tfds.features.Tensor(shape=(size, size, 3),
                                          dtype=np.uint8, encoding="bytes"),
            "captions": tfds.features.Tensor(shape=(cfg.n_captions,),
                                             dtype=np.object_),
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    root = os.fspath(dl_manager.manual_dir)
    splits = KARPATHY_SPLITS if cfg.karpathy else ("train", "validation")
    out = {}
    for split in splits:
      images = (karpathy_images(root, split) if cfg.karpathy
                else official_images(root, split, cfg.year))
      if cfg.max_per_split:
        images = images[:cfg.max_per_split]
      out[split] = self._generate_examples(root, images)
    return out

  def _generate_examples(self, root: str, images) -> Iterator:
    cfg = self.builder_config
    for image_id, rel, caps in images:
      path = manual.image_path(root, rel)
      yield image_id, {
          "image_id": np.int64(image_id),
          "image": jpeg.load_image(path, cfg.image_size, cfg.fit),
          "captions": fixed_captions(caps, cfg.n_captions, image_id),
      }


def build(cfg: CocoConfig, data_dir: str, manual_dir: str) -> CocoCaptions:
  return manual.build(CocoCaptions, cfg, data_dir, manual_dir)
