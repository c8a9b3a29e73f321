"""Training and evaluation on real data (config.data.source="coco_vqa") from a
tiny COCO + VQAv2 manual directory in the official formats."""

import math
import os

import jax
import numpy as np
import pytest

import fake_coco
from r3jax import config as config_lib
from r3jax.data import pipeline
from r3jax.train import loop
from r3jax.train import real_setup


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  manual = str(tmp_path_factory.mktemp("coco_manual"))
  made = fake_coco.write(manual)
  return manual, str(tmp_path_factory.mktemp("coco_data")), made


def _config(dirs, name="coco_vqa_joint"):
  manual, data, _ = dirs
  c = config_lib.from_file(f"configs/{name}.py:runlocal,manual_dir={manual}",
                           os.path.dirname(os.path.dirname(__file__)))
  c.data.dir = data
  c.progress_bar = False
  c.compilation_cache_dir = ""
  return c


def test_a_coco_vqa_run_trains_and_scores_every_task(dirs, tmp_path):
  c = _config(dirs)
  metrics = loop.train_and_evaluate(c, str(tmp_path / "run"),
                                    jax.devices()[:1])
  for key in ("caption/bleu4", "caption/cider_d", "vqa/accuracy",
              "vqa/type/yes/no/accuracy", "vqa/type/number/accuracy",
              "vqa/type/other/accuracy", "ita/accuracy", "ita/pos_accuracy"):
    assert key in metrics and math.isfinite(metrics[key]), key
    assert 0 <= metrics[key] <= (10 if "cider" in key else 1), key
  # 6 validation images: 6 captions and 12 ITA pairs scored; 16 of the 18
  # questions (runlocal: data.max_per_split=16).
  assert metrics["ita/count"] == 12
  world = real_setup.load(c)
  path = real_setup.tokenizer_path(c, world.coco, world.vqa)
  assert os.path.exists(path)
  records = world.records("validation", -1)
  assert [len(records[t]) for t in ("caption", "vqa", "ita")] == [6, 16, 6]
  mtime = os.path.getmtime(path)
  real_setup.load(c)  # the vocabulary is trained once per data setting
  assert os.path.getmtime(path) == mtime


def test_records_pair_captions_and_cut_long_texts(dirs):
  c = _config(dirs)
  world = real_setup.load(c)
  caps = world.train_source["caption"]
  assert world.train_source["ita"] is caps  # one record set, two tasks
  n = len(caps)
  partners = [caps.other(i) for i in range(n)]
  assert all(p != i for i, p in enumerate(partners))
  assert len(set(partners)) > n // 2  # spread, not one image for all
  r = caps[3]
  assert r["ita_labels"] == ["yes", "no"]
  assert r["ita_captions"] == [r["captions"][3 % 5],
                               caps[partners[3]]["captions"][3 % 5]]
  # A text far longer than max_len is cut to what fits.
  fit = real_setup.Fit(world.tokenizer, c.tasks)
  long = " ".join(["a large red square on black"] * 40)
  cut = fit(long, "caption")
  assert len(world.tokenizer.encode(cut)) <= c.tasks.caption.max_len - 2
  assert len(cut) > 20 and long.lower().startswith(cut.strip())
  assert fit("a red square", "caption") == "a red square"
  v = world.train_source["vqa"][0]
  assert v["vqa_questions"][0] == "What color is the square?"
  assert len(v["answers"]) == 10 and v["vqa_types"] == ["other"]
  # Every training example formats (nothing overflows its max_len).
  for task in c.tasks:
    ds = pipeline.task_dataset(world.train_source, world.tokenizer, task,
                               c.tasks[task].max_len, 4, 0,
                               context=world.task_context())
    assert ds[0]["tokens"].shape == (4, c.tasks[task].max_len)


def test_official_vqa_accuracy_by_answer_type():
  answers = {0: ["red"] * 9 + ["orange"], 1: ["1"] * 7 + ["one"] * 3,
             2: ["yes"] * 8 + ["no"] * 2}
  records = [{"answers": a} for a in answers.values()]
  items = [(0, "q", "red", {"qtype": "other"}),
           (1, "q", "1", {"qtype": "number"}),
           (2, "q", "yes", {"qtype": "yes/no"}),
           (0, "q", "red", {"qtype": "other"})]
  preds = ["orange", "one", "no", "red"]
  got = real_setup.score_vqa_official("vqa", preds, items, records)
  # orange: 1 match -> 0.3; "one" normalises to "1": 10 -> 1; no: 2 -> 0.6;
  # red: 9 -> 1.
  assert got["type/other/accuracy"] == pytest.approx((0.3 + 1) / 2)
  assert got["type/number/accuracy"] == pytest.approx(1.0)
  assert got["type/yes/no/accuracy"] == pytest.approx(0.6)
  assert got["accuracy"] == pytest.approx((0.3 + 1 + 0.6 + 1) / 4)


def test_real_data_config_errors(dirs):
  c = _config(dirs)
  c.data.manual_dir = ""
  with pytest.raises(ValueError, match="needs config.data.manual_dir"):
    config_lib.validate(c)
  c = _config(dirs, "coco_caption_only")
  c.eval_tasks = ["caption", "reflect"]
  with pytest.raises(ValueError, match="R3 tasks .*reflect.* not supported"):
    config_lib.validate(c)
  c = _config(dirs)
  c.data.source = "coco"
  with pytest.raises(ValueError, match="'world' or 'coco_vqa'"):
    config_lib.validate(c)
  c = _config(dirs)
  c.data.layout = "shared"
  c.interference.halves = False
  for t in c.tasks.values():
    t.batch_size = 8
  with pytest.raises(ValueError, match="needs one record set for every task"):
    loop.train_and_evaluate(c, "/nonexistent/never-written",
                            jax.devices()[:1])
  c = _config(dirs)
  c.final_eval.split = "test"
  world = real_setup.load(c)
  with pytest.raises(ValueError, match="no 'test' split .*karpathy"):
    world.records("test", 4)
  np.testing.assert_equal(len(world.records("validation", 4)["vqa"]), 4)
