"""Competence gates: the table, where its metrics come from, and a fresh
evaluation that reproduces a run's own."""

import json
import os

import jax
import numpy as np
import pytest

from r3jax.analysis import competence
from r3jax.train import checkpoint as ckpt_lib
from r3jax.run import loop

from experiments import report
from experiments.competence import __main__ as command


def _metrics(vqa=0.97, pos=0.95, neg=0.9, f1=0.93, strict=0.8):
  m = {f"vqa/qtype/{q}/accuracy": vqa for q in competence.QTYPES}
  m.update({"vqa/accuracy": vqa, "ita/pos_accuracy": pos,
            "ita/neg_accuracy": neg, "caption/f1": f1,
            "caption/v_strict": strict})
  return m


def test_gates_pass_and_fail_at_their_thresholds():
  m = _metrics()
  assert competence.passes(m) and competence.failed(m) == []
  assert competence.with_derived(m)[competence.DISCRIMINATION] == pytest.approx(
      0.85)
  # Each gate fails just below its threshold and passes at it.
  for key, gate in [("vqa/qtype/relation/accuracy", 0.95),
                    ("caption/f1", 0.90)]:
    assert competence.passes({**m, key: gate})
    bad = {**m, key: gate - 1e-6}
    assert not competence.passes(bad) and len(competence.failed(bad)) == 1
  # Discrimination, not accuracy: always "yes" is 1.0 positive, 0.0 negative.
  yes = {**m, "ita/pos_accuracy": 1.0, "ita/neg_accuracy": 0.0}
  assert competence.failed(yes) == ["ITA discrimination (pos + neg - 1)"]
  assert competence.passes({**m, "ita/pos_accuracy": 0.9,
                            "ita/neg_accuracy": 0.9})
  # V_strict and overall VQA are reported, never gated.
  assert competence.passes({**m, "caption/v_strict": 0.0, "vqa/accuracy": 0.})


def test_r3_testable_means_understanding_passes_and_captions_do_not():
  m = _metrics(f1=0.7, strict=0.6)
  assert competence.r3_testable(m) and not competence.passes(m)
  assert "R3-testable" in competence.table(m)
  assert not competence.r3_testable({**m, "caption/v_strict": 0.61})
  assert not competence.r3_testable({**m, "ita/neg_accuracy": 0.5})
  assert not competence.r3_testable({**m, "vqa/qtype/count/accuracy": 0.9})
  del m["caption/v_strict"]
  assert not competence.r3_testable(m)
  assert "R3-testable" not in competence.table(_metrics())  # V_strict 0.8


def test_a_missing_gated_metric_fails_except_relation_in_a_one_object_world():
  m = _metrics()
  del m["vqa/qtype/relation/accuracy"]
  assert competence.failed(m) == ["VQA relation"]
  assert competence.passes(m, max_objects=1)
  assert "VQA relation" not in competence.table(m, max_objects=1)
  del m["ita/neg_accuracy"]
  assert "ITA discrimination (pos + neg - 1)" in competence.failed(m)


def test_table_rows_and_verdict():
  m = _metrics(vqa=0.5)
  text = competence.table(m, title="run")
  assert text.startswith("**run**")
  assert "| VQA shape | 0.500 | >= 0.95 | FAIL |" in text
  assert "| ITA discrimination (pos + neg - 1) | 0.850 | >= 0.80 | pass |" in text
  assert "| caption V_strict | 0.800 |  |  |" in text
  assert text.endswith("not competent: 6 gate(s) failed (VQA existence, "
                       "VQA count, VQA color, VQA shape, VQA size, "
                       "VQA relation)")
  assert competence.table(_metrics()).endswith("competent: every gate passed")


def _write_jsonl(path, rows):
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def test_read_prefers_result_json_then_the_last_split_row(tmp_path):
  wd = str(tmp_path)
  _write_jsonl(os.path.join(wd, "metrics.jsonl"), [
      {"step": 10, "loss": 1.0},
      {"step": 10, "validation/vqa/accuracy": 0.4,
       "validation/ita/pos_accuracy": 0.9, "validation/ita/neg_accuracy": 0.3},
      {"step": 20, "test/vqa/accuracy": 0.6},
      {"step": 20, "validation/vqa/accuracy": 0.5},
      {"step": 30, "test/vqa/accuracy": 0.7, "test/caption/f1": 0.2}])
  assert competence.read(wd) == {"vqa/accuracy": 0.7, "caption/f1": 0.2}
  assert competence.read(wd, "validation") == {"vqa/accuracy": 0.5}
  curve = competence.curve(wd)
  assert [c["step"] for c in curve] == [10, 20]
  assert curve[0][competence.DISCRIMINATION] == pytest.approx(0.2)
  with open(os.path.join(wd, "result.json"), "w") as f:
    json.dump({"metrics": {"vqa/accuracy": 0.9}}, f)
  assert competence.read(wd) == {"vqa/accuracy": 0.9}
  with pytest.raises(ValueError, match="holds no 'train' evaluation"):
    competence.read(_only_jsonl(tmp_path), "train")
  with pytest.raises(FileNotFoundError, match="neither result.json"):
    competence.read(str(tmp_path / "nothing"))


def _only_jsonl(tmp_path):
  d = tmp_path / "only"
  d.mkdir()
  _write_jsonl(d / "metrics.jsonl", [{"step": 1, "test/vqa/accuracy": 0.1}])
  return str(d)


def test_the_report_prints_the_start_arms_gate_table_averaged_over_seeds(
    tmp_path):
  runs = []
  for seed, vqa in enumerate((0.9, 1.0)):
    d = tmp_path / f"seed{seed}"
    d.mkdir()
    runs.append({"arm": "base", "workdir": str(d),
                 "metrics": _metrics(vqa=vqa)})
  runs.append({"arm": "other", "workdir": str(tmp_path),
               "metrics": _metrics(vqa=0.0)})
  text = "\n".join(report._competence_section(runs, "base"))
  assert "mean over 2 seed(s)" in text
  assert "| VQA color | 0.950 | >= 0.95 | pass |" in text
  assert text.rstrip().endswith("competent: every gate passed")


def test_evaluate_scores_a_runs_parameters_as_its_final_evaluation(
    tiny, tmp_path, capsys):
  """A fresh evaluation of the latest checkpoint, and of the exported
  params.npz alone, on a dataset built with other split sizes, reproduces
  the run's own final test evaluation: a split's first images do not depend
  on the split sizes."""
  c = tiny()
  c.total_steps = 2
  c.interference.enabled = False
  wd = str(tmp_path / "run")
  result = loop.train_and_evaluate(c, wd, jax.devices()[:1])
  n = c.final_eval.max_examples
  keys = [k for k in result if "/" in k]
  for source in ("checkpoint", "params.npz"):
    if source == "params.npz":
      ckpt_lib.export_params(wd)
      export = str(tmp_path / "export")
      os.makedirs(export)
      for name in ("params.npz", "config.json"):
        os.replace(os.path.join(wd, name), os.path.join(export, name))
      wd = export
    got = competence.evaluate(wd, "test", n, devices=jax.devices()[:1])
    assert {k: got[k] for k in keys} == {k: result[k] for k in keys}, source
  # Another model's parameters are refused with the way to match them.
  other = tiny()
  other.model.dec_depth = 2
  _, _, setup, _ = loop.build(other, jax.devices()[:1])
  with pytest.raises(ValueError, match=r"configs/joint.py:base=DIR"):
    ckpt_lib.load_params(wd, setup.abstract["params"])
  # The command reads the run's own evaluation and says it is not competent.
  assert command.main([os.path.join(str(tmp_path), "run")]) == 1
  assert "not competent" in capsys.readouterr().out


def test_export_ships_a_finished_run_with_its_gate_verdict_and_slice(
    tiny, tmp_path):
  from experiments.competence import export
  c = tiny()
  c.total_steps = 2
  c.interference.enabled = False
  wd = str(tmp_path / "run")
  loop.train_and_evaluate(c, wd, jax.devices()[:1])
  out = str(tmp_path / "base")
  r = export.export(wd, out, slice_n=8)
  assert sorted(os.listdir(out)) == ["config.json", "params.npz", "result.json"]
  with open(os.path.join(out, "result.json")) as f:
    assert json.load(f) == r
  assert r["metrics"] == competence.read(wd) and r["step"] == 2
  assert r["competent"] is False and "caption fact F1" in r["failed"]
  assert r["slice"]["max_examples"] == 8
  # The slice is what the shipped parameters score on the first 8 images.
  again = competence.evaluate(out, "test", 8, devices=jax.devices()[:1])
  assert {k: again[k] for k in r["slice"]["metrics"]} == r["slice"]["metrics"]
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["init_from"] == ""
  # An unfinished run is refused.
  c.total_steps = 4
  with open(os.path.join(wd, "config.json"), "w") as f:
    json.dump(c.to_dict(), f)
  with pytest.raises(ValueError, match="stopped at step 2 of 4"):
    export.export(wd, out)


@pytest.mark.parametrize("answers,fusion", [("word", 0), ("trace", 1)])
def test_relation_breakdown_asks_each_question_as_drawn_and_canonical(
    tiny, tmp_path, answers, fusion):
  """experiments.competence.relations: every relation question of the
  split's first images is asked twice (as drawn, canonical), grouped by
  phrasing and answer; the unions are the count-weighted means, of the
  written grid indices' scores too (relation_answers="trace", here with
  an early-fusion block, which training, VQA and captions decode with)."""
  from experiments.competence import relations
  c = tiny()
  c.total_steps = 2
  c.interference.enabled = False
  c.data.relation_answers = answers
  c.model.fusion_depth = fusion
  c.data.position_questions = 0.5 if fusion else 0.0
  wd = str(tmp_path / "run")
  loop.train_and_evaluate(c, wd, jax.devices()[:1])
  questions, captions = [], []
  got = relations.breakdown(wd, "validation", 8, questions, captions)
  config = competence.eval_config(wd, "validation", 8)
  _, world, _, _ = loop.build(config, jax.devices()[:1])
  recs = world.records("validation", 8)
  n = sum(t == "relation" for r in recs for t in r["vqa_types"])
  assert n > 0 and got["as drawn"]["count"] == got["canonical"]["count"] == n
  from r3jax.world import scene_from_arrays
  from r3jax.world.vqa import position_questions
  where = relations.positions(wd, "validation", 8)
  # One question per nameable object (objects hold distinct cells).
  assert where["count"] == sum(len({a for _, a in position_questions(
      scene_from_arrays(r["scene"], world.world), world.world)})
      for r in recs)
  assert 0 <= where["both"] <= min(where["column"], where["row"]) <= 1
  parts = {k: v for k, v in got.items() if k.startswith("as drawn: ")
           and " | " in k}
  assert sum(v["count"] for v in parts.values()) == n
  assert len(questions) == 2 * n
  for form in ("as drawn", "canonical"):
    mine = [q["correct"] for q in questions if q["group"].startswith(form)]
    assert np.mean(mine) == pytest.approx(got[form]["accuracy"])
  out = tmp_path / "a.json"
  out.write_text(json.dumps({"questions": questions}))
  same = relations.compare(str(out), str(out))
  assert (same["n"], same["diff"], same["p"]) == (n, 0.0, 1.0)
  keys = ["accuracy"] + ([f"trace {k}" for k in relations.TRACE]
                         if answers == "trace" else [])
  assert {k for v in got.values() for k in v if "trace" in k} == set(keys[1:])
  for k in keys:
    assert got["as drawn"][k] == pytest.approx(sum(
        v[k] * v["count"] for v in parts.values()) / n)
  assert all(k.split(": ")[1].split(" | ")[0] in (
      "left of", "above") for k in got if k.startswith("canonical: "))
  assert 0 <= got["captions: relation clauses true"]["accuracy"] <= 1
  # --out keeps each caption and the truth of its relation clauses: the
  # clause share is theirs.
  assert [row["record"] for row in captions] == list(range(8))
  said = [t for row in captions for t in row["relations"]]
  assert got["captions: relation clauses true"]["count"] == len(said)
  assert got["captions: relation clauses true"]["accuracy"] == (
      pytest.approx(np.mean(said)) if said else 0.0)
  assert 0 <= got["captions: stated kinds true"]["accuracy"] <= 1


def test_compare_captions_pairs_images_whose_captions_both_state_a_relation(
    tmp_path):
  from experiments.competence import relations
  a = [[True], [True, True], [False], [], [True, False], [True]]
  b = [[False], [True, True], [True], [True], [False], []]
  for name, rel in (("a", a), ("b", b)):
    (tmp_path / f"{name}.json").write_text(json.dumps({"captions": [
        {"record": k, "relations": r} for k, r in enumerate(rel)]}))
  got = relations.compare_captions(str(tmp_path / "a.json"),
                                   str(tmp_path / "b.json"))
  # images 0, 1, 2, 4: a all-true on 0, 1; b on 1, 2
  assert (got["n"], got["only_a"], got["only_b"]) == (4, 1, 1)
  assert got["diff"] == 0.0 and got["p"] == 1.0
  (tmp_path / "c.json").write_text(json.dumps({"captions": [
      {"record": 0, "relations": [True]}]}))
  with pytest.raises(ValueError, match="captions of the same images"):
    relations.compare_captions(str(tmp_path / "a.json"),
                               str(tmp_path / "c.json"))
