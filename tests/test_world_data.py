"""The world dataset, built and read without TensorFlow, and the tokenizer."""

import importlib.util
import os
import sys

import numpy as np
import pytest

from r3jax import world
from r3jax.data import tokenizer as tok_lib
from r3jax.data import world_tfds

CFG = world.WorldConfig(image_size=32, n_captions=2, n_questions=3, n_ita=2)
SIZES = {"train": 12, "validation": 6, "test": 6}
SEED = 3


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def builder(root):
  return world_tfds.build(CFG, root, SIZES, SEED)


def test_tensorflow_is_not_needed(builder):
  assert importlib.util.find_spec("tensorflow") is None
  world_tfds.data_source(builder, "train")[0]
  assert "tensorflow" not in sys.modules


@pytest.mark.parametrize("split", list(SIZES))
def test_records_equal_regenerated_examples(builder, split):
  source = world_tfds.data_source(builder, split)
  assert len(source) == SIZES[split]
  seed = world_tfds.split_seed(SEED, split)
  for i in range(len(source)):
    rec, ex = source[i], world.generate_example(CFG, seed, i)
    assert rec["index"] == i and rec["index"].dtype == np.int64
    assert rec["image"].dtype == np.uint8 and rec["image"].shape == (32, 32, 3)
    np.testing.assert_array_equal(rec["image"], ex["image"])
    for k, v in ex["scene"].items():
      assert rec["scene"][k].dtype == v.dtype
      np.testing.assert_array_equal(rec["scene"][k], v)
    assert rec["captions"] == ex["captions"]
    assert list(zip(rec["vqa_types"], rec["vqa_questions"],
                    rec["vqa_answers"])) == ex["vqa"]
    assert list(zip(rec["ita_captions"], rec["ita_labels"])) == ex["ita"]


def test_splits_are_different_streams(builder):
  first = [world_tfds.data_source(builder, s)[0]["captions"] for s in SIZES]
  assert len({tuple(c) for c in first}) == len(SIZES)


def _mtimes(directory):
  return {os.path.join(d, n): os.stat(os.path.join(d, n)).st_mtime_ns
          for d, _, names in os.walk(directory) for n in names}


def test_second_build_reuses_the_dataset(root, builder, monkeypatch):
  before = _mtimes(builder.data_dir)

  def fail(*args):
    raise AssertionError("the dataset was generated again")

  monkeypatch.setattr(world_tfds, "generate_example", fail)
  again = world_tfds.build(CFG, root, SIZES, SEED)
  assert again.data_dir == builder.data_dir
  assert _mtimes(builder.data_dir) == before


def test_config_names_separate_worlds():
  a = world_tfds.builder_config(CFG, SIZES, SEED)
  assert a.name == world_tfds.builder_config(CFG, dict(SIZES), SEED).name
  others = [world_tfds.builder_config(CFG, SIZES, SEED + 1),
            world_tfds.builder_config(CFG, {**SIZES, "train": 13}, SEED),
            world_tfds.builder_config(world.WorldConfig(image_size=32),
                                      SIZES, SEED),
            world_tfds.builder_config(world.WorldConfig(
                max_objects=1, number_words=3), SIZES, SEED),
            world_tfds.builder_config(world.WorldConfig(max_objects=1),
                                      SIZES, SEED)]
  assert len({a.name} | {o.name for o in others}) == 6


def test_the_default_worlds_name_is_unchanged():
  """Worlds built before WorldConfig.number_words keep their names (and
  their data on disk): the field is in the description only when set."""
  sizes = {"train": 20_000, "validation": 500, "test": 1_000}
  c = world_tfds.builder_config(world.WorldConfig(), sizes, 0)
  assert c.name == "w7a6f865e9f93"
  assert "number_words" not in c.description


def test_tokenizer_special_ids_and_round_trip(builder):
  tok = world_tfds.load_tokenizer(builder)
  assert tok.tokens == tok_lib.WordTokenizer.from_world(CFG).tokens
  assert (tok.pad_id, tok.eos_id, tok.sep_id, tok.unk_id) == (0, 1, 2, 3)
  assert [tok.task_id(t) for t in tok_lib.TASKS] == [4, 5, 6, 7, 8]
  assert tok.vocab_size == 9 + len(world.vocabulary(CFG))
  texts = []
  for i in range(SIZES["train"]):
    rec = world_tfds.data_source(builder, "train")[i]
    texts += rec["captions"] + rec["vqa_questions"] + rec["vqa_answers"]
    texts += rec["ita_captions"] + rec["ita_labels"]
  for text in texts:
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text


def test_tokenizer_decode_and_unknown_words(tmp_path):
  tok = tok_lib.WordTokenizer.from_world(CFG)
  circle = tok.encode("circle")[0]
  assert tok.encode("a purple circle") == [tok.encode("a")[0], tok.unk_id,
                                           circle]
  ids = [tok.task_id("caption"), circle, tok.sep_id, tok.unk_id, circle,
         tok.pad_id, tok.eos_id, circle]
  assert tok.decode(ids) == "circle <unk> circle"
  assert tok.decode([circle, tok.vocab_size + 5]) == "circle <unk>"
  path = str(tmp_path / "vocab.json")
  tok.save(path)
  assert tok_lib.WordTokenizer.load(path).tokens == tok.tokens
  with pytest.raises(KeyError, match="unknown task"):
    tok.task_id("translate")
  with pytest.raises(ValueError, match="duplicate"):
    tok_lib.WordTokenizer(["a", "a"])


def test_tokenizer_with_tasks_appends_their_tokens_after_the_words(tmp_path):
  """with_tasks gives each new task a prompt token after the words (sorted
  by name): no earlier id moves; the tokens are neither words (strict
  encoding rejects them) nor decoded; save/load keeps them."""
  tok = tok_lib.WordTokenizer.from_world(CFG)
  more = tok.with_tasks(["zeta", "caption", "alpha"])
  assert more.tokens[:tok.vocab_size] == tok.tokens
  assert more.tokens[tok.vocab_size:] == ("<alpha>", "<zeta>")
  assert more.task_id("alpha") == tok.vocab_size
  assert more.task_id("caption") == tok.task_id("caption")
  assert more.with_tasks(["alpha"]) is more
  grown = more.with_tasks(["beta"])
  assert grown.tokens[:more.vocab_size] == more.tokens
  assert grown.task_id("beta") == more.vocab_size
  circle = tok.encode("circle")[0]
  assert more.decode([more.task_id("zeta"), circle]) == "circle"
  with pytest.raises(ValueError, match="not in the vocabulary"):
    more.encode("<zeta> circle", strict=True)
  path = str(tmp_path / "vocab.json")
  grown.save(path)
  back = tok_lib.WordTokenizer.load(path)
  assert back.tokens == grown.tokens and back.task_id("beta") == grown.task_id(
      "beta")
