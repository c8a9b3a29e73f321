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
from r3jax.r3 import real as r3_real
from r3jax.run import loop
from r3jax.run import real_setup


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
  c.interference.enabled = False  # the plain step (conftest.tiny_config)
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


def test_first_edit_instructions_and_their_application():
  d = "a red square on black".split()
  assert r3_real.first_edit(d, d) is None
  instr, edited, pair = r3_real.first_edit(d, "a blue square on black".split())
  assert (instr, edited, pair) == ("replace red with blue",
                                   "a blue square on black".split(),
                                   ("red", "blue"))
  instr, edited, pair = r3_real.first_edit(d, "a square on black".split())
  assert (instr, " ".join(edited), pair) == ("remove red", "a square on black",
                                             None)
  instr, edited, _ = r3_real.first_edit(d, "a big red square on black".split())
  assert (instr, " ".join(edited)) == ("add big after a",
                                       "a big red square on black")
  instr, edited, _ = r3_real.first_edit(d, "see a red square on black".split())
  assert (instr, " ".join(edited)) == ("add see at the start",
                                       "see a red square on black")
  # Only the first differing span is edited.
  instr, edited, _ = r3_real.first_edit(d, "one blue square on white".split())
  assert instr == "replace a red with one blue"
  assert " ".join(edited) == "one blue square on black"
  refs = ["a red circle".split(), "a red square on black ground".split()]
  assert r3_real.nearest(d, refs) == refs[1]
  assert r3_real.words("A Red, square. Don't!") == ["a", "red", "square",
                                                    "don't"]
  rng = np.random.default_rng(0)
  for _ in range(20):
    assert r3_real.corrupt(d, rng, ["blue", "red"]) != d


def test_real_r3_sequences_target_the_nearest_reference(dirs):
  c = _config(dirs, "coco_r3_sft")
  world = real_setup.load(c)
  tok = world.tokenizer
  record = {"captions": ["A large red square.", "a red square on black"]}

  def decoded(out):
    """The supervised tokens' text."""
    ids = [int(t) for t, m in zip(out["targets"], out["loss_mask"]) if m]
    return tok.decode(ids)

  draft = "a large blue square".split()
  out = r3_real.sequence(tok, "reflect", draft,
                         [r3_real.words(x) for x in record["captions"]],
                         c.r3, c.tasks.reflect.max_len)
  assert decoded(out) == "replace blue with red"
  out = r3_real.sequence(tok, "refine", draft,
                         [r3_real.words(x) for x in record["captions"]],
                         c.r3, c.tasks.refine.max_len)
  assert decoded(out) == "a large red square"
  # The consistency pair: where the reflection writes "red" and where the
  # refined caption does (logits at p predict token p + 1), red vs blue.
  red, blue = tok.encode("red")[0], tok.encode("blue")[0]
  assert out["cons_weight"][0] == c.r3.consistency > 0
  assert out["targets"][out["cons_src"][0]] == red
  assert out["targets"][out["cons_dst"][0]] == red
  assert out["cons_src"][0] < out["cons_dst"][0]
  assert list(out["cons_src_ids"][0, :, 0]) == [red, blue]
  stop = r3_real.sequence(tok, "reflect", "a red square on black".split(),
                          [r3_real.words(x) for x in record["captions"]],
                          c.r3, c.tasks.reflect.max_len)
  assert decoded(stop) == "no further edit needed"
  # Formatting real records: every training example of both stages fits.
  for task in ("reflect", "refine"):
    ds = pipeline.task_dataset(world.train_source, tok, task,
                               c.tasks[task].max_len, 4, 0,
                               context=world.task_context())
    assert ds[0]["loss_mask"].sum() > 0


def test_r3_sft_on_coco_trains_and_scores_rounds(dirs, tmp_path):
  c = _config(dirs, "coco_r3_sft")
  c.r3.onpolicy_every = 2  # the model's own drafts from step 2 on
  metrics = loop.train_and_evaluate(c, str(tmp_path / "run"),
                                    jax.devices()[:1])
  for r in range(c.r3.rounds + 1):
    assert math.isfinite(metrics[f"r3/round{r}/cider_d"])
    assert 0 <= metrics[f"r3/round{r}/bleu4"] <= 1
  assert 0 <= metrics["r3/round1/stop_rate"] <= 1
  assert "r3/false_stop" not in metrics  # no ground truth on real data
  assert os.listdir(tmp_path / "run" / "drafts")  # on-policy drafts made
  c.rl.enabled = True
  with pytest.raises(ValueError, match="R3-RL's rewards come from the world"):
    config_lib.validate(c)


def test_real_data_tables_carry_no_world_targets():
  from r3jax import report  # noqa: PLC0415
  assert ">= 0.85" in report.table({"vqa/accuracy": 0.5})
  assert ">= 0.85" not in report.table({"vqa/accuracy": 0.5}, world=False)
