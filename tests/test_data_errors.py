"""Bad records and bad dataset directories fail with errors that name them."""

import json
import os
import re
import shutil

import numpy as np
import pytest

from r3jax import config as config_lib
from r3jax import world
from r3jax.data import pipeline, tasks, world_tfds
from r3jax.data.tokenizer import WordTokenizer

CFG = world.WorldConfig(image_size=32, n_captions=2, n_questions=3, n_ita=2)
SIZES = {"train": 8, "validation": 4, "test": 4}
SEED = 5


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """A clean dataset: (data_dir, builder); tests damage copies of it."""
  root = str(tmp_path_factory.mktemp("clean"))
  return root, world_tfds.build(CFG, root, SIZES, SEED)


@pytest.fixture(scope="module")
def records(built):
  source = world_tfds.data_source(built[1], "train")
  return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def tok(built):
  return world_tfds.load_tokenizer(built[1])


def _context():
  return {"world": CFG, "r3": config_lib.defaults().r3}


def _first_batch(records, tok, task="caption", max_len=40):
  """Formats batch 0, which holds every record (8 records, batch 8)."""
  return pipeline.task_dataset(records, tok, task, max_len, len(records), 0,
                               context=_context())[0]


def _with(records, i, **fields):
  out = list(records)
  out[i] = dict(out[i], **fields)
  return out


def _re_shape(shape):
  return re.escape(str(tuple(shape)))


# --- images ------------------------------------------------------------------

@pytest.mark.parametrize("image, shape, dtype", [
    (lambda x: x.astype(np.float32) / 255, (32, 32, 3), "float32"),
    (lambda x: x.astype(np.int64), (32, 32, 3), "int64"),
    (lambda x: x[:16, :16], (16, 16, 3), "uint8"),
    (lambda x: x[..., 0], (32, 32), "uint8"),
    (lambda x: np.concatenate([x, x[..., :1]], -1), (32, 32, 4), "uint8"),
])
def test_bad_image_names_the_record(records, tok, image, shape, dtype):
  bad = _with(records, 2, image=image(records[2]["image"]))
  with pytest.raises(ValueError, match=(
      rf"record 2 has an image of shape {_re_shape(shape)} and dtype {dtype}; "
      r"expected shape \(32, 32, 3\) and dtype uint8")):
    _first_batch(bad, tok)
  # The shared layout reads the same images.
  cfg = config_lib.defaults()
  with pytest.raises(ValueError, match="record 2 has an image"):
    pipeline.shared_dataset(bad, tok, cfg.tasks, len(bad), 0,
                            context=_context())[0]


def test_good_images_pass_unchanged(records, tok):
  batch = _first_batch(records, tok)
  assert batch["image"].dtype == np.uint8
  assert batch["image"].shape == (8, 32, 32, 3)
  # Without a world in the context the size is free but must be square RGB.
  assert pipeline.check_image(records[0]) is records[0]["image"]
  with pytest.raises(ValueError, match=r"expected shape \('S', 'S', 3\)"):
    pipeline.check_image({"image": np.zeros((8, 4, 3), np.uint8)})


# --- texts -------------------------------------------------------------------

@pytest.mark.parametrize("task, fields, message", [
    ("caption", dict(captions=["a red circle", "  "]),
     r"record 4 \(caption task\): field 'captions' holds an empty text"),
    ("caption", dict(captions=[]),
     r"field 'captions' must be a non-empty list of texts, got \[\]"),
    ("caption", dict(captions=[b"there is a red circle"] * 2),
     r"field 'captions' holds a bytes, not a str"),
    ("vqa", dict(vqa_answers=["yes", "", "no"]),
     r"record 4 \(vqa task\): field 'vqa_answers' holds an empty text"),
    ("ita", dict(ita_captions=["", ""]),
     r"field 'ita_captions' holds an empty"),
    ("reflect", dict(captions=["", ""]),
     r"record 4 \(reflect task\): field 'captions' holds an empty text"),
])
def test_empty_texts_name_the_record_and_field(records, tok, task, fields,
                                               message):
  with pytest.raises(ValueError, match=message):
    _first_batch(_with(records, 4, **fields), tok, task, 96)


def test_missing_text_field_names_it(records, tok):
  bad = list(records)
  bad[6] = {k: v for k, v in records[6].items() if k != "vqa_questions"}
  with pytest.raises(ValueError, match=r"record 6 \(vqa task\): no text field "
                                       r"'vqa_questions'"):
    _first_batch(bad, tok, "vqa", 20)


@pytest.mark.parametrize("task, fields, max_len", [
    ("caption", dict(captions=["there is a purple circle"] * 2), 40),
    ("vqa", dict(vqa_questions=["is there a purple circle ?"] * 3), 20),
    ("reflect", dict(captions=["there is a purple circle"] * 2), 96),
    ("refine", dict(captions=["there is a purple circle"] * 2), 144),
])
def test_unknown_word_names_it(records, tok, task, fields, max_len):
  with pytest.raises(ValueError, match=(
      rf"record 1 \({task} task\): 'purple' not in the vocabulary")):
    _first_batch(_with(records, 1, **fields), tok, task, max_len)


def test_tokenizer_strict_and_lenient(tok):
  # Model output may hold anything: unknown words read as <unk>.
  assert tok.encode("a purple circle")[1] == tok.unk_id
  assert tok.encode("a red circle", strict=True) == tok.encode("a red circle")
  with pytest.raises(ValueError, match=r"'purple', 'mauve' not in the vocab"):
    tok.encode("a purple mauve purple circle", strict=True)
  # Special tokens are not words: an "<eos>" inside a text would cut it short.
  with pytest.raises(ValueError, match=r"'<eos>' not in the vocabulary"):
    tok.encode("a red <eos> circle", strict=True)
  with pytest.raises(ValueError, match=r"'<unk>' not in the vocabulary"):
    tasks.format_prompt(tok, "vqa", "is there a <unk> ?", 20)


def test_empty_question_and_target(tok):
  with pytest.raises(ValueError, match="vqa example has an empty target"):
    tasks.format_sequence(tok, "vqa", "is there a red circle ?", " ", 20)
  with pytest.raises(ValueError, match="vqa example has an empty question"):
    tasks.format_sequence(tok, "vqa", "", "yes", 20)
  with pytest.raises(ValueError, match="ita example has an empty question"):
    tasks.format_prompt(tok, "ita", " ", 20)
  # The caption task has no question at all.
  out = tasks.format_sequence(tok, "caption", None, "there is a red circle", 8)
  assert out["tokens"][0] == tok.task_id("caption")
  with pytest.raises(ValueError, match=r"leaves no room in "
                                       r"config.tasks.vqa.max_len=3"):
    tasks.format_prompt(tok, "vqa", "is there a red circle ?", 3)


@pytest.mark.parametrize("task, max_len", [
    ("caption", 4), ("vqa", 4), ("reflect", 6), ("refine_direct", 6)])
def test_over_long_examples_are_an_error_not_truncated(records, tok, task,
                                                       max_len):
  with pytest.raises(ValueError, match=(
      rf"\({task} task\): .*needs \d+ tokens but "
      rf"config.tasks.{task}.max_len is {max_len}")):
    _first_batch(records, tok, task, max_len)


# --- the dataset directory ---------------------------------------------------

def _copy(built, tmp_path):
  """A copy of the clean dataset: (data_dir, its version directory)."""
  root, builder = built
  data_dir = str(tmp_path / "data")
  shutil.copytree(root, data_dir)
  return data_dir, os.path.join(data_dir, os.path.relpath(builder.data_dir,
                                                          root))


def _split_file(version_dir, split="train"):
  return os.path.join(version_dir,
                      f"r3_world-{split}.array_record-00000-of-00001")


def _truncate(path):
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])


def _edit_json(path, edit):
  with open(path) as f:
    d = json.load(f)
  edit(d)
  with open(path, "w") as f:
    json.dump(d, f)


def _other_world(info):
  desc = json.loads(info["configDescription"])
  desc["world"]["image_size"] = 64
  info["configDescription"] = info["description"] = json.dumps(desc)


def _write(path, text):
  with open(path, "w") as f:
    f.write(text)


@pytest.mark.parametrize("damage, message", [
    (lambda d: _truncate(_split_file(d)), r"has a bad 'train' split"),
    (lambda d: os.remove(_split_file(d, "test")),
     r"has a bad 'test' split \(RuntimeError: open\(\) failed"),
    (lambda d: _edit_json(os.path.join(d, "dataset_info.json"),
                          lambda i: i["splits"][1].update(shardLengths=["9"])),
     r"has a bad 'train' split \(ValueError: 9 records, not 8\)"),
    (lambda d: _write(os.path.join(d, "dataset_info.json"), "{"),
     r"cannot be read \(ParseError"),
    (lambda d: os.remove(os.path.join(d, "dataset_info.json")),
     r"has no readable dataset_info.json \(FileNotFoundError"),
    (lambda d: _edit_json(os.path.join(d, "dataset_info.json"), _other_world),
     r"was built for other settings \(stored, config\): "
     r"\{'world.image_size': \(64, 32\)\}"),
])
def test_damaged_dataset_is_named_with_the_fix(built, tmp_path, damage,
                                               message):
  data_dir, version_dir = _copy(built, tmp_path)
  damage(version_dir)
  with pytest.raises(ValueError, match=message) as e:
    world_tfds.build(CFG, data_dir, SIZES, SEED)
  assert f"the world dataset in {version_dir}" in str(e.value)
  assert "delete that directory to rebuild it" in str(e.value)


@pytest.mark.parametrize("damage, message", [
    (lambda p: _write(p, "{"), r"has no readable vocab.json \(JSONDecodeError"),
    (lambda p: _edit_json(p, lambda v: v.update(tokens=v["tokens"][:-1])),
     r"has a vocab.json of \d+ tokens that is not the world's vocabulary"),
])
def test_damaged_vocabulary_is_named(built, tmp_path, damage, message):
  data_dir, version_dir = _copy(built, tmp_path)
  damage(os.path.join(version_dir, "vocab.json"))
  builder = world_tfds.build(CFG, data_dir, SIZES, SEED)
  with pytest.raises(ValueError, match=message):
    world_tfds.load_tokenizer(builder)


def test_unreadable_record_is_named(built, monkeypatch):
  builder = built[1]

  class Broken:
    def __len__(self):
      return 8

    def __getitem__(self, i):
      raise RuntimeError("Corrupted Riegeli/records file")

  monkeypatch.setattr(builder, "as_data_source", lambda split: Broken())
  source = world_tfds.data_source(builder, "train")
  with pytest.raises(ValueError, match=(
      rf"record 3 of the 'train' split in {re.escape(builder.data_dir)} "
      r"cannot be read "
      r"\(RuntimeError: Corrupted Riegeli.*delete the directory")):
    source[3]


def test_other_versions_and_worlds_are_left_alone(built, tmp_path):
  """A directory that holds only another version (or world) of the dataset:
  this one is built next to it and the other is not touched."""
  data_dir, version_dir = _copy(built, tmp_path)
  old = version_dir.replace("1.0.0", "0.9.0")
  os.rename(version_dir, old)
  before = sorted(os.listdir(old))
  builder = world_tfds.build(CFG, data_dir, SIZES, SEED)
  assert builder.data_dir == version_dir and sorted(os.listdir(old)) == before
  a = world_tfds.data_source(builder, "validation")[3]
  b = world_tfds.data_source(built[1], "validation")[3]
  np.testing.assert_array_equal(a["image"], b["image"])
  assert a["captions"] == b["captions"]


def test_data_dir_that_cannot_be_created(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(ValueError, match=(
      rf"cannot create the dataset directory "
      rf"{re.escape(repr(str(blocker / 'data')))} "
      r"\((NotADirectoryError|FileExistsError).*set config.data.dir")):
    world_tfds.build(CFG, str(blocker / "data"), SIZES, SEED)


def test_missing_dataset_is_built(tmp_path):
  """A data.dir without the dataset (or without the directory) is filled."""
  data_dir = str(tmp_path / "new" / "data")
  builder = world_tfds.build(CFG, data_dir, {"train": 2, "test": 1}, SEED)
  assert len(world_tfds.data_source(builder, "train")) == 2
  assert world_tfds.load_tokenizer(builder).tokens == (
      WordTokenizer.from_world(CFG).tokens)
