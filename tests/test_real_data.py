"""COCO / VQAv2 builders on a tiny fake manual directory, and the official
VQA metric on hand-computed cases."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from r3jax.data import coco, jpeg, manual, vqav2
from r3jax.eval import vqa_official as vqa

# image id -> (folder, colour); Karpathy split of each image.
IMAGES = {9: ("train2014", (200, 30, 30)), 3: ("train2014", (30, 200, 30)),
          42: ("val2014", (30, 30, 200)), 7: ("val2014", (128, 128, 128))}
KARPATHY = {3: "train", 9: "restval", 42: "val", 7: "test"}
CAPTIONS = {9: ["a red square.", "red"], 3: [f"green {i}" for i in range(6)],
            42: ["blue"] * 5, 7: ["grey", "gray", "slate", "ash", "dim"]}
SIZE = 16


def _name(image_id):
  return f"COCO_{IMAGES[image_id][0]}_{image_id:012d}.jpg"


def _write_json(path, data):
  with open(path, "w") as f:
    json.dump(data, f)


def _answers(*pairs):
  out = [a for a, n in pairs for _ in range(n)]
  return [{"answer": a, "answer_id": i + 1, "answer_confidence": "yes"}
          for i, a in enumerate(out)]


QUESTIONS = {  # question id -> (image id, question, answers)
    9001: (9, "What colour?", _answers(("red", 8), ("pink", 2))),
    9000: (9, "How many squares?", _answers(("1", 6), ("one", 4))),
    3000: (3, "Is it green?", _answers(("yes", 10))),
    42000: (42, "What colour?", _answers(("blue", 9), ("navy", 1))),
}


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
  """80x40 images: the image's colour in the centred 40x40 square, black
  side bands; image 7 is greyscale."""
  root = tmp_path_factory.mktemp("manual")
  os.makedirs(root / "annotations")
  for image_id, (folder, colour) in IMAGES.items():
    os.makedirs(root / folder, exist_ok=True)
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, 20:60] = colour
    img = Image.fromarray(pixels)
    if image_id == 7:
      img = img.convert("L")
    img.save(root / folder / _name(image_id), quality=95)
  for folder in ("train2014", "val2014"):
    ids = [i for i in IMAGES if IMAGES[i][0] == folder]
    _write_json(root / "annotations" / f"captions_{folder}.json", {
        "images": [{"id": i, "file_name": _name(i), "width": 80,
                    "height": 40} for i in ids],
        "annotations": [{"id": 100 * i + k, "image_id": i, "caption": c}
                        for i in ids for k, c in enumerate(CAPTIONS[i])]})
    qids = [q for q, v in QUESTIONS.items() if IMAGES[v[0]][0] == folder]
    _write_json(root / f"v2_OpenEnded_mscoco_{folder}_questions.json", {
        "questions": [{"image_id": QUESTIONS[q][0], "question":
                       QUESTIONS[q][1], "question_id": q} for q in qids]})
    _write_json(root / f"v2_mscoco_{folder}_annotations.json", {
        "annotations": [{"question_id": q, "image_id": QUESTIONS[q][0],
                         "answers": QUESTIONS[q][2],
                         "multiple_choice_answer": QUESTIONS[q][2][0]["answer"],
                         "answer_type": "other", "question_type": "what"}
                        for q in qids]})
  _write_json(root / "dataset_coco.json", {"images": [
      {"filepath": IMAGES[i][0], "filename": _name(i), "cocoid": i,
       "split": KARPATHY[i], "sentences": [{"raw": c} for c in CAPTIONS[i]]}
      for i in IMAGES]})
  return str(root)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("built"))


def _colour(image_id):
  return np.array(IMAGES[image_id][1] if image_id != 7 else (128,) * 3)


def test_resize_crops_the_centre_square_or_squashes(manual_dir):
  path = os.path.join(manual_dir, "train2014", _name(9))
  crop = jpeg.load_image(path, SIZE, "crop")
  squash = jpeg.load_image(path, SIZE, "squash")
  assert crop.shape == squash.shape == (SIZE, SIZE, 3)
  assert crop.dtype == np.uint8
  # The crop is the coloured square only; squashing keeps the bands
  # (a quarter of the width each side).
  assert np.abs(crop[2:-2, 2:-2] - _colour(9)).max() < 20
  assert squash[:, :3].max() < 20 and squash[:, -3:].max() < 20
  assert np.abs(squash[2:-2, 6:-6] - _colour(9)).max() < 20
  grey = jpeg.load_image(os.path.join(manual_dir, "val2014", _name(7)), SIZE)
  assert grey.shape == (SIZE, SIZE, 3)
  with pytest.raises(ValueError, match="fit must be one of"):
    jpeg.load_image(path, SIZE, "stretch")


def _check_coco(builder, split, ids, n_captions):
  source = manual.data_source(builder, split)
  assert len(source) == len(ids)
  for record, image_id in zip(source, ids):
    assert record["image_id"] == image_id
    assert record["image"].shape == (SIZE, SIZE, 3)
    assert np.abs(record["image"][2:-2, 2:-2] - _colour(image_id)).max() < 20
    caps = CAPTIONS[image_id]
    assert record["captions"] == [caps[i % len(caps)]
                                  for i in range(n_captions)]


def test_coco_official_splits(manual_dir, data_dir):
  builder = coco.build(coco.coco_config(image_size=SIZE, n_captions=5),
                       data_dir, manual_dir)
  assert set(builder.info.splits) == {"train", "validation"}
  _check_coco(builder, "train", [3, 9], 5)  # sorted by id; 9 cycles its 2
  _check_coco(builder, "validation", [7, 42], 5)
  assert "tensorflow" not in sys.modules
  assert importlib.util.find_spec("tensorflow") is None


def test_coco_karpathy_splits(manual_dir, data_dir):
  cfg = coco.coco_config(image_size=SIZE, n_captions=3, karpathy=True)
  builder = coco.build(cfg, data_dir, manual_dir)
  assert set(builder.info.splits) == {"train", "validation", "test"}
  _check_coco(builder, "train", [3, 9], 3)  # train + restval
  _check_coco(builder, "validation", [42], 3)
  _check_coco(builder, "test", [7], 3)


def test_coco_missing_files_are_named(tmp_path, manual_dir):
  empty = tmp_path / "empty"
  os.makedirs(empty)
  with pytest.raises(ValueError, match="captions_train2014.json is missing"):
    coco.official_images(str(empty), "train", 2014)
  os.remove(os.path.join(manual_dir, "val2014", _name(7)))
  try:
    with pytest.raises(ValueError, match=f"image .*{_name(7)} is missing"):
      coco.build(coco.coco_config(image_size=8), str(tmp_path / "d"),
                 manual_dir)
  finally:  # restore for other tests
    pixels = np.full((40, 80), 0, np.uint8)
    pixels[:, 20:60] = 128
    Image.fromarray(pixels).save(
        os.path.join(manual_dir, "val2014", _name(7)), quality=95)


def test_vqav2_records(manual_dir, data_dir):
  builder = vqav2.build(vqav2.vqa_config(image_size=SIZE), data_dir,
                        manual_dir)
  train = manual.data_source(builder, "train")
  assert [r["question_id"] for r in train] == [3000, 9000, 9001]
  val = manual.data_source(builder, "validation")
  assert [r["question_id"] for r in val] == [42000]
  for record in list(train) + list(val):
    image_id, question, answers = QUESTIONS[record["question_id"]]
    assert record["image_id"] == image_id
    assert record["question"] == question
    assert record["answers"] == [a["answer"] for a in answers]
    assert record["multiple_choice_answer"] == answers[0]["answer"]
    assert (record["answer_type"], record["question_type"]) == ("other",
                                                                "what")
    want = jpeg.load_image(os.path.join(manual_dir, IMAGES[image_id][0],
                                        _name(image_id)), SIZE)
    np.testing.assert_array_equal(record["image"], want)


def test_vqav2_rejects_wrong_answer_count(tmp_path, manual_dir):
  root = tmp_path / "m"
  os.makedirs(root)
  for name in os.listdir(manual_dir):
    if name.startswith("v2_") and "val2014" in name:
      with open(os.path.join(manual_dir, name)) as f:
        data = json.load(f)
      if "annotations" in data:
        data["annotations"][0]["answers"].pop()
      _write_json(root / name, data)
  with pytest.raises(ValueError, match="question 42000 has 9 answers"):
    vqav2.read_split(str(root), "validation")


@pytest.mark.parametrize("m,want", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9),
                                    (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_by_matches(m, want):
  """m of 10 answers match. Leaving out a matching answer (m ways) leaves
  m-1 matches, leaving out another (10-m ways) leaves m; each scores
  min(k/3, 1):
    m=1: (1*0 + 9*1/3) / 10 = 0.3
    m=2: (2*1/3 + 8*2/3) / 10 = 6/10 = 0.6
    m=3: (3*2/3 + 7*1) / 10 = 9/10 = 0.9   (not 1.0: 3 matches is not enough)
    m=4: (4*1 + 6*1) / 10 = 1.0"""
  answers = ["cat"] * m + ["dog"] * (10 - m)
  assert vqa.accuracy("cat", answers) == pytest.approx(want)


def test_vqa_accuracy_normalises_like_the_script():
  # Answers that differ: both sides normalised, "Two dogs!" -> "2 dogs".
  assert vqa.accuracy("Two dogs!", ["2 dogs"] * 2 + ["dogs"] * 8) == \
      pytest.approx(0.6)
  assert vqa.accuracy("the dog.", ["dog"] * 3 + ["cat"] * 7) == \
      pytest.approx(0.9)
  # Answers that differ are lowercased on both sides: "Yes" matches 4 "yes".
  assert vqa.accuracy("Yes", ["yes"] * 4 + ["no"] * 6) == 1.0
  assert vqa.accuracy("YES", ["Yes"] * 2 + ["no"] * 8) == pytest.approx(0.6)
  # Ten identical answers: the script compares the raw stripped strings
  # (`item['answer']==resAns`), case-sensitively and without normalising.
  assert vqa.accuracy("Yes", ["yes"] * 10) == 0.0
  assert vqa.accuracy(" yes\n", ["yes"] * 10) == 1.0
  assert vqa.accuracy("Yes", ["Yes"] * 10) == 1.0
  assert vqa.accuracy("yes.", ["yes"] * 10) == 0.0
  assert vqa.mean_accuracy(["cat", "dog"], [["cat"] * 10, ["cat"] * 10]) \
      == pytest.approx(0.5)
  with pytest.raises(ValueError, match="2 predictions for 1 questions"):
    vqa.mean_accuracy(["a", "b"], [["a"] * 10])


@pytest.mark.parametrize("raw,want", [
    ("Two", "2"), ("ten", "10"), ("none", "0"), ("the dog.", "dog"),
    ("An apple", "apple"), ("dont", "don't"), ("youre", "you're"),
    ("im", "im"),  # the script's key is "Im": never matches lowercased text
    ("1,000", "1000"), ("yes!", "yes"), ("3.5", "3.5"), ("e.g", "eg"),
    ("yes, no", "yes no"), ("black/white", "black white"), ("x-ray", "x ray"),
    ("a, 1,5", "15"),  # a digit,digit comma: every mark is deleted
    ("  Red\tcar\n", "red car"),
])
def test_vqa_normalize(raw, want):
  assert vqa.normalize(raw) == want
