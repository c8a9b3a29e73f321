"""The competence search's bookkeeping: commands, CPU time, shipped
checkpoints and the learning-curve report."""

import json
import os
import sys

import pytest

from experiments.competence import report, search


@pytest.fixture
def variants(tmp_path, monkeypatch):
  monkeypatch.setattr(search, "ROOT", str(tmp_path / "runs"))
  monkeypatch.setattr(search, "STARTS", str(tmp_path / "starts"))
  monkeypatch.setattr(report, "HERE", str(tmp_path))
  monkeypatch.setattr(search, "VARIANTS", {
      "a": ("variant a", ("--config.model.stem=conv",)),
      "b": ("variant b", ())})
  return tmp_path


def _write(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def test_commands_name_the_variant_and_refuse_unknown_ones(variants):
  cmd = search.command("a")
  assert cmd[1:4] == ["-m", "r3jax.main",
                      f"--config=configs/joint.py:steps={search.STEPS}"]
  assert f"--workdir={os.path.join(search.ROOT, 'a')}" in cmd
  assert cmd[-1] == "--config.model.stem=conv"
  with pytest.raises(SystemExit, match="unknown variant 'c'"):
    search.command("c")


def test_run_records_cpu_time_and_stops_at_until(variants, monkeypatch):
  """A stand-in for r3jax.main writes a step a line; --until stops it with
  SIGTERM at that step and the stretch's seconds are appended."""
  # The handler only flags the stop (an exception raised in a handler that
  # runs inside a file's finalizer would be swallowed); the loop exits 75.
  script = ("import json, signal, sys, time\n"
            "wd = [a for a in sys.argv if a.startswith('--workdir=')][0][10:]\n"
            "stop = []\n"
            "signal.signal(signal.SIGTERM, lambda *_: stop.append(1))\n"
            "for s in range(1, 1000):\n"
            "  if stop: sys.exit(75)\n"
            "  with open(wd + '/metrics.jsonl', 'a') as f:\n"
            "    f.write(json.dumps({'step': s}) + '\\n')\n"
            "  sum(range(20000)); time.sleep(0.05)\n")
  monkeypatch.setattr(search, "command", lambda name: [
      sys.executable, "-c", script, f"--workdir={search.workdir(name)}"])
  monkeypatch.setattr(search.time, "sleep", lambda s: None)
  assert search.run("a", until=5) == 75
  with open(os.path.join(search.workdir("a"), "cpu.jsonl")) as f:
    rec = json.loads(f.read())
  assert rec["from_step"] == 0 and rec["to_step"] >= 5 and rec["exit"] == 75
  assert rec["cpu_s"] > 0 and rec["wall_s"] > 0
  assert search.run("a", until=5) == 0  # already there: nothing runs
  cpu_s, wall_s, step = report.cpu(search.workdir("a"))
  assert (cpu_s, wall_s, step) == (rec["cpu_s"], rec["wall_s"], rec["to_step"])


def test_a_shipped_checkpoint_restores_a_fresh_clone(variants):
  wd = search.workdir("a")
  for step in (500, 1000):
    os.makedirs(os.path.join(wd, "checkpoints", str(step), "state"))
  open(os.path.join(wd, "checkpoints", "500", "commit_success.txt"), "w").close()
  # 1000 was never committed: 500 is shipped.
  shipped = search.ship("a")
  assert shipped == os.path.join(wd, "resume", "500")
  import shutil
  shutil.rmtree(os.path.join(wd, "checkpoints"))
  search.restore_shipped(wd)
  assert os.listdir(os.path.join(wd, "checkpoints")) == ["500"]
  # A run with checkpoints of its own keeps them.
  os.makedirs(os.path.join(wd, "checkpoints", "1500"))
  search.restore_shipped(wd)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["1500", "500"]


def test_report_tables_every_500_steps_with_cpu_hours(variants):
  wd = search.workdir("a")
  _write(os.path.join(wd, "metrics.jsonl"), [
      {"step": 250, "validation/vqa/qtype/shape/accuracy": 0.1},
      {"step": 500, "validation/vqa/qtype/shape/accuracy": 0.4,
       "validation/ita/pos_accuracy": 0.9, "validation/ita/neg_accuracy": 0.3,
       "validation/caption/f1": 0.25},
      {"step": 510, "loss": 1.0}])
  _write(os.path.join(wd, "cpu.jsonl"), [
      {"cpu_s": 3600.0, "wall_s": 1800.0, "to_step": 510},
      {"cpu_s": 1800.0, "wall_s": 900.0, "to_step": 510}])
  text = open(report.collect()).read()
  assert "### `a`" in text and "### `b`" not in text  # b never ran
  assert "Trained to step 510 of" in text and "1.50 CPU-hours" in text
  assert "| 500 | - | - | - | 0.400 | - | - | 0.200 | 0.250 | - |" in text
  assert "| 250 |" not in text
  assert os.path.exists(variants / "curves.png")
  assert "The R3 loop" not in text  # a has no R3 tasks


def test_report_tables_the_r3_loop_of_a_variant_with_r3_tasks(variants):
  _write(os.path.join(search.workdir("a"), "metrics.jsonl"), [
      {"step": 500, "validation/caption/f1": 0.25,
       "validation/r3/round0/v_strict": 0.5,
       "validation/r3/round3/v_strict": 0.625,
       "validation/r3/refine_given_edit": 0.125},
      {"step": 1000, "test/caption/f1": 0.5, "test/r3/round0/v_strict": 0.75,
       "test/r3/round1/worse": 0.25}])
  text = "\n".join(report.variant_section("a"))
  assert "| 500 | 0.500 | 0.625 | - | - | - | - | - | - | 0.125 |" in text
  assert "| 1000 (test) | 0.750 | - | - | 0.250 | - | - | - | - | - |" in text


def test_a_branch_starts_from_its_parents_shipped_checkpoint(variants,
                                                             monkeypatch):
  """A branch with no checkpoint of its own copies its parent's shipped
  step (parameters, optimizer, data position), and says so when that step
  is not there; its report section says where its CPU time starts."""
  monkeypatch.setattr(search, "BRANCHES", {"b": ("a", 500)})
  parent = search.workdir("a")
  os.makedirs(os.path.join(parent, "resume", "500", "state"))
  with pytest.raises(SystemExit, match=r"b continues a from step 700"):
    monkeypatch.setattr(search, "BRANCHES", {"b": ("a", 700)})
    search.restore_shipped(search.workdir("b"), "b")
  monkeypatch.setattr(search, "BRANCHES", {"b": ("a", 500)})
  search.restore_shipped(search.workdir("b"), "b")
  assert os.listdir(os.path.join(search.workdir("b"), "checkpoints")) == [
      "500"]
  _write(os.path.join(search.workdir("b"), "metrics.jsonl"), [
      {"step": 1000, "validation/vqa/qtype/shape/accuracy": 0.5}])
  text = "\n".join(report.variant_section("b"))
  assert "since it left `a` at step 500" in text


def test_a_variant_may_name_its_own_config_file(variants, monkeypatch):
  monkeypatch.setattr(search, "CONFIGS", {"b": ("configs/other.py", None)})
  monkeypatch.setattr(search, "LONG", {"b": 7})
  assert search.command("b")[3] == "--config=configs/other.py:steps=7"
  assert search.command("a")[3].startswith("--config=configs/joint.py")


def test_a_variant_may_start_from_a_pinned_shipped_step(variants,
                                                        monkeypatch):
  """"a@500": the parameters of a's checkpoint shipped at step 500, with
  a's config.json, unpacked once outside git, whatever a has run since."""
  monkeypatch.setattr(search, "CONFIGS", {"b": ("configs/other.py", "a@500")})
  parent = search.workdir("a")
  with pytest.raises(SystemExit, match=r"a@500: .*resume/500 is not there"):
    search.command("b")
  os.makedirs(os.path.join(parent, "resume", "500", "state"))
  os.makedirs(os.path.join(parent, "checkpoints", "900"))
  with open(os.path.join(parent, "config.json"), "w") as f:
    f.write("{}")
  start = os.path.join(search.STARTS, "a_500")
  assert search.command("b")[3] == (
      f"--config=configs/other.py:steps={search.STEPS},base={start}")
  assert os.listdir(os.path.join(start, "checkpoints")) == ["500"]
  assert os.path.exists(os.path.join(start, "config.json"))


def test_lineage_follows_branches_and_pinned_starts(variants, monkeypatch):
  """A base's CPU time adds up the runs its parameters went through: each
  branch's parent and each pinned start's variant, oldest first."""
  monkeypatch.setattr(search, "VARIANTS", {n: (n, ()) for n in "abcd"})
  monkeypatch.setattr(search, "BRANCHES", {"b": ("a", 500)})
  monkeypatch.setattr(search, "CONFIGS", {"c": ("configs/x.py", "b@900"),
                                          "d": ("configs/x.py", None)})
  assert search.lineage("c") == ["a", "b", "c"]
  assert [search.parent(n) for n in "abcd"] == [None, ("a", 500),
                                                ("b", 900), None]
  assert search.lineage("d") == ["d"]


def test_relation_table_pairs_each_run_with_the_reference(variants):
  """report.relations_section: one column per saved breakdown; runs with
  written indices show them; every run with per-question predictions is
  paired with PAIRED_WITH by the exact McNemar test, and the tests are
  counted."""
  def saved(name, right, trace=None):
    questions = [{"record": i, "group": "canonical: left of | yes",
                  "question": f"q{i}", "answer": "yes", "correct": r}
                 for i, r in enumerate(right)]
    group = {"accuracy": sum(right) / len(right), "count": len(right)}
    if trace:
      group.update({"trace a": trace[0], "trace b": trace[1]})
    os.makedirs(os.path.join(str(variants), "diagnosis"), exist_ok=True)
    with open(os.path.join(str(variants), "diagnosis",
                           f"relations_{name}.json"), "w") as f:
      json.dump({"groups": {"canonical: left of": group},
                 "questions": questions}, f)

  saved(report.PAIRED_WITH, [True] * 5 + [False] * 15)
  saved("x_100", [True] * 15 + [False] * 5, trace=(0.5, 0.25))
  text = "\n".join(report.relations_section())
  assert "1 tests, not corrected" in text
  # 10 questions right only in x, none only in the reference: p = 2 / 2**10
  assert "| +0.500 (0.002) |" in text
  assert "| 0.500 / 0.250 |" in text
