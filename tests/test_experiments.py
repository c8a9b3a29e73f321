"""The study runner: dependency order, init_from plumbing, skip-on-rerun,
RESULTS.md statistics and error messages."""

import dataclasses
import json
import math
import os
import shlex
import shutil
import subprocess

import jax
import ml_collections
import numpy as np
import pandas as pd
import pytest

from conftest import _DATA_DIR, flags_config, typed
from experiments import report
from experiments import run
from experiments import studies
from r3jax import config as config_lib
from r3jax.analysis import interference
from r3jax.train import metrics as metrics_lib

SETS = [f"--config.data.dir={_DATA_DIR}", "--config.progress_bar=False",
        "--config.compilation_cache_dir=", "--config.mesh.data=1"]


def _result(root, arm, seed=0):
  with open(os.path.join(root, "tiny", "runs", arm, f"seed{seed}",
                         "result.json")) as f:
    return json.load(f)


# The tiny study as the tests below run it: with interference statistics,
# 4 logged steps per run and series of at most 3 rows (subsampled).
STUDY_SETS = SETS + [
    "--config.interference.enabled=True", "--config.total_steps=4",
    "--config.eval_every_steps=4", "--config.ckpt_every_steps=4",
    "--config.final_eval.max_examples=8"]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
  """(root, the runner's records, a copy of root as the run left it) of one
  run of the tiny study."""
  root = str(tmp_path_factory.mktemp("study"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(interference, "SERIES_ROWS", 3)
    records = run.run_study("tiny", root, 1, None,
                            config_lib.parse_overrides(STUDY_SETS),
                            log=lambda _: None, devices=jax.devices()[:1])
  pristine = str(tmp_path_factory.mktemp("pristine") / "root")
  shutil.copytree(root, pristine)
  return root, records, pristine


def test_tiny_study_runs_in_order_skips_done_arms_and_reports(
    tiny_study, monkeypatch, capsys):
  root, records, _ = tiny_study
  sets = config_lib.parse_overrides(STUDY_SETS)
  assert [(r["arm"], r["status"]) for r in records] == [
      ("first", "ran"), ("frozen", "ran")]
  first, frozen = _result(root, "first"), _result(root, "frozen")
  first_dir = os.path.join(root, "tiny", "runs", "first", "seed0")
  with open(os.path.join(root, "tiny", "runs", "frozen", "seed0",
                         "config.json")) as f:
    saved = json.load(f)
  assert saved["init_from"] == os.path.abspath(first_dir)
  assert saved["optim"]["lr"] == 0.0 and saved["total_steps"] == 4
  assert saved["data"]["dir"] == _DATA_DIR and saved["mesh"]["data"] == 1
  # At learning rate 0 the second arm keeps the first arm's final parameters
  # (the norm logged after each update), not a fresh initialisation's (the
  # first arm's step-1 norm: its warmup makes that update zero).
  norms = {arm: [r["param_norm"] for r in metrics_lib.read(os.path.join(
      root, "tiny", "runs", arm, "seed0")) if "param_norm" in r]
           for arm in ("first", "frozen")}
  assert norms["frozen"] == [norms["first"][-1]] * 4
  assert norms["first"][0] != norms["first"][-1]
  for k in ("caption/f1", "vqa/accuracy", "ita/accuracy"):
    assert frozen["metrics"][k] == first["metrics"][k], k
  assert frozen["command"].endswith(
      f"--config.init_from={os.path.abspath(first_dir)}")
  assert "--config.optim.lr=0.0" in frozen["command"]
  assert first["wall_seconds"] > 0 and first["hardware"]["cpus"] == os.cpu_count()

  # A rerun trains nothing: every arm has its result.json.
  def no_training(config, workdir):
    raise AssertionError(f"trained {workdir} again")
  monkeypatch.setattr(run, "train", no_training)
  assert run.main(["tiny", "--seeds=1", f"--root={root}", *STUDY_SETS]) == 0
  assert capsys.readouterr().out.count(": done (") == 2
  # ... but a different command for the same workdir is refused.
  with pytest.raises(ValueError, match="made by another command"):
    run.run_study("tiny", root, 1, None, {"data.dir": _DATA_DIR},
                  log=lambda _: None)

  text = open(os.path.join(root, "tiny", "RESULTS.md")).read()
  row = next(l for l in text.splitlines() if l.startswith("| `frozen`"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[1] == "1"  # seeds
  assert cells[2] == f"{frozen['metrics']['caption/f1']:.4f}"  # no std: 1 seed
  assert cells[5] == f"{frozen['metrics']['vqa/accuracy']:.4f}"
  assert cells[-1] == "n/a (< 2 shared seeds)"
  assert "| `first` | 1 |" in text and "reference" in text
  assert "![caption F1 vs VQA accuracy](pareto.png)" in text
  assert os.path.getsize(os.path.join(root, "tiny", "pareto.png")) > 1000
  assert first["command"] in text

  # Git keeps result.json and a start's exported parameters, not
  # checkpoints: in a fresh clone the arm after it starts from params.npz
  # and gives the same result.
  monkeypatch.undo()
  frozen_result = os.path.join(root, "tiny", "runs", "frozen", "seed0",
                               "result.json")
  assert os.path.exists(os.path.join(first_dir, "params.npz"))
  assert not os.path.exists(os.path.join(root, "tiny", "runs", "frozen",
                                         "seed0", "params.npz"))
  shutil.rmtree(os.path.join(first_dir, "checkpoints"))

  def frozen_again() -> list[str]:
    """Runs the study with frozen's result removed; it must come out the
    same. Returns what the runner logged."""
    os.remove(frozen_result)
    logged = []
    records = run.run_study("tiny", root, 1, None, sets, log=logged.append,
                            devices=jax.devices()[:1])
    assert [(r["arm"], r["status"]) for r in records] == [
        ("first", "done"), ("frozen", "ran")]
    drop = lambda m: {k: v for k, v in m.items() if "seconds" not in k}  # noqa: E731
    assert drop(_result(root, "frozen")["metrics"]) == drop(frozen["metrics"])
    return logged

  assert not any("training it again" in l for l in frozen_again())

  # Without params.npz either, the starting run is trained again by its
  # command, must reproduce its metrics, and the arm after it runs as before.
  os.remove(os.path.join(first_dir, "params.npz"))
  assert any("its checkpoint is missing; training it again" in l
             for l in frozen_again())
  with open(os.path.join(first_dir, "remade.json")) as f:
    assert json.load(f)["differ"] == {}

  # Trained again on another machine type, the starting run may not
  # reproduce (here: its recorded F1 is not what it gives). When a new arm
  # needs it, it takes the new metrics, and the arm already done after it,
  # made from the old checkpoint, runs again.
  shutil.rmtree(os.path.join(first_dir, "checkpoints"))
  os.remove(os.path.join(first_dir, "params.npz"))
  path = os.path.join(first_dir, "result.json")
  recorded = json.load(open(path))
  recorded["metrics"]["caption/f1"] += 0.5
  json.dump(recorded, open(path, "w"))
  tiny = studies.get("tiny")
  one_step = dataclasses.replace(
      tiny.arm("frozen"), name="frozen1",
      overrides={**tiny.arm("frozen").overrides, "total_steps": 1})
  monkeypatch.setitem(studies.STUDIES, "tiny", dataclasses.replace(
      tiny, arms=[*tiny.arms, one_step]))
  logged = []
  records = run.run_study("tiny", root, 1, None, sets, log=logged.append,
                          devices=jax.devices()[:1])
  assert [(r["arm"], r["status"]) for r in records] == [
      ("first", "done"), ("frozen", "ran"), ("frozen1", "ran")]
  with open(os.path.join(first_dir, "remade.json")) as f:
    assert list(json.load(f)["differ"]) == ["caption/f1"]
  assert _result(root, "first")["metrics"]["caption/f1"] == first["metrics"][
      "caption/f1"]
  assert any("frozen seed 0: its result came from the old first run" in l
             for l in logged)
  assert os.path.exists(os.path.join(root, "tiny", "runs", "frozen", "seed0",
                                     "result.superseded.json"))


def _fake(root, arm, seed, f1, vqa):
  d = os.path.join(root, "tiny", "runs", arm, f"seed{seed}")
  os.makedirs(d)
  with open(os.path.join(d, "result.json"), "w") as f:
    json.dump({"arm": arm, "seed": seed, "command": f"cmd {arm} {seed}",
               "metrics": {"caption/f1": f1, "vqa/accuracy": vqa,
                           "train_seconds": 1.0},
               "wall_seconds": 2.0, "hardware": {"device_kind": "cpu",
                                                 "devices": 1, "cpus": 2}}, f)


def test_collect_mean_std_and_seed_noise_column(tmp_path):
  root = str(tmp_path)
  ref_f1, ref_vqa = [0.50, 0.52, 0.54], [0.70, 0.71, 0.72]
  arm_f1, arm_vqa = [0.60, 0.61, 0.62], [0.705, 0.69, 0.72]  # F1 up, VQA same
  for s in range(3):
    _fake(root, "first", s, ref_f1[s], ref_vqa[s])
    _fake(root, "frozen", s, arm_f1[s], arm_vqa[s])
  text = open(report.collect(root, "tiny")).read()
  rows = {l.split("|")[1].strip(): [c.strip() for c in l.strip("|").split("|")]
          for l in text.split("\n## ")[0].splitlines()  # the main table
          if l.startswith("| `")}
  f1 = rows["`frozen`"][2]
  assert f1 == f"{np.mean(arm_f1):.4f} ± {np.std(arm_f1, ddof=1):.4f}"
  assert rows["`first`"][5] == (f"{np.mean(ref_vqa):.4f} ± "
                                f"{np.std(ref_vqa, ddof=1):.4f}")
  assert rows["`frozen`"][-1] == "caption F1 +"
  assert rows["`first`"][-1] == "reference"
  assert rows["`frozen`"][3] == "-"  # V_strict was not measured
  assert "- cpu × 1 devices, 2 CPUs" in text
  # Paired over seeds, Holm over the study's 2 comparisons (F1, VQA).
  from scipy import stats
  pair = {l.split("|")[3].strip(): [c.strip() for c in l.strip("|").split("|")]
          for l in text.split("## Paired comparisons")[1].splitlines()
          if l.startswith("| `frozen`")}
  p_f1 = stats.ttest_rel(arm_f1, ref_f1).pvalue
  p_vqa = stats.ttest_rel(arm_vqa, ref_vqa).pvalue
  assert pair["caption F1"][5] == f"{p_f1:.3g}"
  assert pair["caption F1"][6] == f"{min(1, 2 * p_f1):.3g} *"
  assert pair["VQA accuracy"][6] == f"{max(p_vqa, min(1, 2 * p_f1)):.3g}"
  assert pair["caption F1"][3].startswith(f"{np.mean(arm_f1) - 0.52:+.4f} [")
  assert "over all 2 comparisons of this study" in text
  # The threshold: two standard errors of the difference.
  se = math.sqrt(np.var(arm_vqa, ddof=1) / 3 + np.var(ref_vqa, ddof=1) / 3)
  gap = abs(np.mean(arm_vqa) - np.mean(ref_vqa))
  assert report.differs((np.mean(arm_vqa), np.std(arm_vqa, ddof=1), 3),
                        (np.mean(ref_vqa), np.std(ref_vqa, ddof=1), 3)) == (
                            gap > 2 * se) == False  # noqa: E712
  assert report.differs((1.0, 0.0, 1), (0.0, 0.0, 3)) is None
  assert report.pareto_front({"a": (1, 0), "b": (0, 1), "c": (0, 0)}) == [
      "a", "b"]


def test_dry_run_prints_commands_in_dependency_order(tmp_path, capsys):
  root = str(tmp_path)
  assert run.main(["tiny", "--arms=frozen", "--seeds=2", f"--root={root}",
                   "--dry-run", "--config.total_steps=6"]) == 0
  lines = capsys.readouterr().out.splitlines()
  first = [os.path.abspath(os.path.join(root, "tiny", "runs", "first",
                                        f"seed{s}")) for s in (0, 1)]
  assert [l.split("--workdir=")[1].split()[0] for l in lines] == [
      first[0], first[0].replace("first", "frozen"),
      first[1], first[1].replace("first", "frozen")]
  assert lines[0].startswith(
      "python -m r3jax.main --config=configs/joint.py:runlocal,seed=0 ")
  assert "configs/joint.py:runlocal,seed=1 " in lines[2]
  # The command line's override replaces the arm's own; init_from comes last.
  assert "--config.total_steps=2" not in lines[1]
  assert lines[1].index("--config.total_steps=6") < lines[1].index(
      "--config.optim.lr=0.0") < lines[1].index(
          f"--config.init_from={first[0]}")
  assert not os.path.exists(os.path.join(root, "tiny"))


def test_registry_studies_resolve():
  mitigation = studies.get("mitigation")
  assert [a.name for a in mitigation.arms][:6] == ["base",
      "weighted_sum_w0.25", "weighted_sum_w0.5", "weighted_sum_w1",
      "weighted_sum_w2", "weighted_sum_w4"]
  config, _ = run.resolve(mitigation, mitigation.arm("weighted_sum_w2"), 1,
                          "x", {})
  assert (config.tasks.caption.weight, config.seed) == (2.0, 1)
  r3 = studies.get("r3")
  config, command = run.resolve(r3, r3.arm("r3_rl_perfect0"), 2, "x", {},
                                scale=True)
  assert config.rl.enabled and config.rl.perfect_ratio == 0.0
  assert config.init_from == os.path.abspath("x/r3/runs/r3_sft/seed2")
  assert config.total_steps == r3.scale["total_steps"]
  assert [a.name for a in r3.order(["r3_rl"])] == ["base", "r3_sft", "r3_rl"]
  dilemma = studies.get("dilemma")
  assert {a.name: a.after for a in dilemma.arms} == {
      "base": None, "gen_only": "base", "und_only": "base", "joint": "base"}
  # The studies' setting reaches every arm, a task's batch the arms with it;
  # every arm of a study that continues a base can load the base's params.
  for name in ("dilemma", "dilemma_easy", "r3", "mitigation"):
    study = studies.get(name)
    lens = set()
    for arm in study.arms:
      c, _ = run.resolve(study, arm, 0, "x", {})
      assert c.model.dec_width == 64 and c.model.enc_overrides.width == 64
      assert all(c.tasks[t].batch_size == studies.SMALL[
          f"tasks.{t}.batch_size"] for t in c.tasks), (name, arm.name)
      assert (c.world.max_objects == 1) == (name == "dilemma_easy")
      lens.add(config_lib.decoder_len(c))
    assert len(lens) == 1, (name, lens)
  # The demo's arms start from the shipped R3 start, with its model.
  demo = studies.get("demo")
  with open(os.path.join(run.ROOT, studies.R3_LOOP, "config.json")) as f:
    width = json.load(f)["model"]["dec_width"]
  for arm in demo.arms:
    c, command = run.resolve(demo, arm, 0, "x", {})
    assert f",base={studies.R3_LOOP}" in command[3]
    assert c.model.dec_width == width and c.total_steps == studies.DEMO_STEPS


def test_the_easy_r3_study_keeps_its_starts_vocabulary():
  """r3_testable_easy continues the default world's R3 start on the easy
  world: every arm draws one object per image with the start's vocabulary
  (so its token ids and parameter shapes), and `start` only scores it."""
  from r3jax.run import world_setup
  from r3jax.world import vocabulary
  study = studies.get("r3_testable_easy")
  with open(os.path.join(run.ROOT, studies.R3_LOOP, "config.json")) as f:
    start = ml_collections.ConfigDict(json.load(f))
  words = vocabulary(world_setup.world_config(start))
  for arm in study.arms:
    c, _ = run.resolve(study, arm, 0, "x", {})
    world = world_setup.world_config(c)
    assert (world.min_objects, world.max_objects) == (1, 1), arm.name
    assert vocabulary(world) == words, arm.name
    assert c.model.dec_width == start.model.dec_width
  c, _ = run.resolve(study, study.arm("start"), 0, "x", {})
  assert (c.total_steps, c.optim.lr) == (1, 0.0)


def test_a_study_names_arms_it_has():
  arm = studies.Arm("a", "configs/joint.py:seed={seed}")
  for field, value in (("reference", "b"), ("start", "b"),
                       ("rl_baseline", "b"), ("rl_baseline", ("a", "b")),
                       ("loops", {"b": ()}), ("loops", {"a": ("b",)})):
    kw = {"reference": "a", field: value}
    with pytest.raises(ValueError, match="study 'x' has no arm 'b'"):
      studies.register(studies.Study("x", "", [arm], **kw))
  assert "x" not in studies.STUDIES


@pytest.mark.parametrize("argv, message", [
    (["nope"], "unknown study 'nope'; known: "),
    (["tiny", "--arms=first,second"], "study 'tiny' has no arm 'second'"),
    (["tiny", "--config.model.nope=1"], "config has no key 'model.nope'"),
    (["tiny", "--config.nope.depth=1"], "config has no key 'nope'"),
    (["tiny", "--config.total_steps=abc"],
     "config key 'total_steps': cannot read"),
])
def test_clear_errors(argv, message, capsys, tmp_path):
  assert run.main([*argv, "--dry-run", f"--root={tmp_path}"]) == 2
  assert message in capsys.readouterr().err


@pytest.mark.parametrize("arg", [
    "--config.total_steps", "--config.total_steps 6", "--set=total_steps=6",
    "--config=configs/joint.py", "--nope"])
def test_arguments_other_than_overrides_are_usage_errors(
    arg, capsys, tmp_path, monkeypatch):
  from experiments import demo  # noqa: PLC0415

  def no_study(*args, **kw):
    raise AssertionError(f"ran a study for {arg!r}")
  monkeypatch.setattr(run, "run_study", no_study)
  for main, argv in ((run.main, ["tiny", "--dry-run"]), (demo.main, [])):
    with pytest.raises(SystemExit) as e:
      main([*argv, *arg.split(), f"--root={tmp_path}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "[--config.KEY=VALUE ...]" in err  # the usage line
    assert f"{arg.split()[0]!r}: expected --config.KEY=VALUE" in err



@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
def test_printed_commands_give_the_resolved_configs(monkeypatch):
  """`python -m r3jax.main` reads each printed command (its --config file and
  --config.KEY=VALUE overrides, here without running it) into the config the
  runner resolved: arm and scale overrides, dicts, tuples, init_from."""
  monkeypatch.chdir(run.ROOT)  # where the printed commands run
  sets = config_lib.parse_overrides([
      "--config.progress_bar=False", "--config.data.dir=/tmp/a b",
      "--config.compilation_cache_dir=", "--config.optim.lr=3e-4",
      "--config.world.relation_axes=('horizontal','vertical')",
      "--config.tasks.caption.weight=2", "--config.interference.enabled=1"])
  for name, arms in (("tiny", None), ("dilemma", ["und_only"]),
                     ("mitigation", ["cagrad_eqtime"]), ("r3", ["r3_rl"]),
                     ("r3_testable", ["r3_rl"])):
    study = studies.get(name)
    for arm in study.order(arms):
      config, command = run.resolve(study, arm, 1, "x", sets, scale=True,
                                    steps=5 if arm.budget else None)
      argv = shlex.split(" ".join(command))[2:]
      assert argv[0] == "r3jax.main"
      got = flags_config(argv)
      if got.init_from:  # relative to the root, where the command runs
        with got.unlocked():
          got.init_from = os.path.abspath(got.init_from)
      assert typed(got.to_dict()) == typed(config.to_dict()), (name, arm.name)


def test_a_study_from_an_exported_start(tmp_path):
  """Study.base: every arm takes the start's world, model and formats; the
  arms that continue no other arm its parameters, the others their arm's;
  the report opens with the start's gate table."""
  study = studies.get("r3_testable")
  start = os.path.join(run.ROOT, studies.R3_LOOP)
  saved = config_lib.load_saved(os.path.join(start, "config.json"))
  sft, rl = study.arm("r3_sft"), study.arm("r3_rl")
  for arm, init_from in ((sft, start),
                         (rl, run.workdir("x", study.name, "r3_sft", 0))):
    config, command = run.resolve(study, arm, 0, "x", {})
    assert f",base={studies.R3_LOOP}" in command[3]
    assert os.path.abspath(config.init_from) == os.path.abspath(init_from)
    assert config.model.to_dict() == saved.model.to_dict()
    assert config.world.to_dict() == saved.world.to_dict()
    assert config.data.relation_answers == saved.data.relation_answers
  lines = "\n".join(report._base_section(studies.R3_LOOP))
  assert "## Competence of the start" in lines
  assert "| VQA relation | 0.965 | >= 0.95 | pass |" in lines
  assert "caption V_strict | 0.615" in lines


def _budget_study():
  return studies.Study(
      name="tiny_budget", doc="", reference="ref", seeds=1,
      arms=[studies.Arm("ref", "configs/joint.py:runlocal,seed={seed}",
                        {"total_steps": 8}),
            studies.Arm("slow", "configs/joint.py:runlocal,seed={seed},"
                        "method=upgrad", {"total_steps": 8}, budget="ref")])


def test_equal_time_arms_get_the_steps_the_timed_step_allows(
    tmp_path, monkeypatch):
  monkeypatch.setitem(studies.STUDIES, "tiny_budget", _budget_study())
  root, timed, trained = str(tmp_path), [], {}

  def fake_seconds(configs, **kw):
    timed.append(sorted(configs))
    assert not configs["ref:plain"].interference.enabled
    assert configs["slow"].interference.method == "upgrad"
    return {"ref:plain": 0.1, "slow": 0.4}
  monkeypatch.setattr(run.wallclock, "step_seconds", fake_seconds)
  monkeypatch.setattr(run, "train", lambda c, wd, devices=None: trained.update(
      {os.path.basename(os.path.dirname(wd)): c.total_steps}) or {})
  sets = {"data.dir": _DATA_DIR}
  records = run.run_study("tiny_budget", root, sets=sets, log=lambda _: None)
  # 8 steps of the plain step take as long as 2 of the slow one.
  assert trained == {"ref": 8, "slow": 2} and timed == [["ref:plain", "slow"]]
  assert "--config.total_steps=2 " in records[1]["command"]
  assert "total_steps=8" not in records[1]["command"]
  kept = json.load(open(os.path.join(root, "tiny_budget", "step_seconds.json")))
  assert kept["seconds"] == {"ref:plain": 0.1, "slow": 0.4}
  # The kept times serve reruns with the same configs; other configs (here a
  # larger batch) are timed again.
  run.run_study("tiny_budget", root, sets=sets, dry_run=True,
                log=lambda _: None)
  assert len(timed) == 1
  run.run_study("tiny_budget", str(tmp_path / "b"), dry_run=True,
                sets={**sets, "tasks.vqa.batch_size": "16"}, log=lambda _: None)
  run.run_study("tiny_budget", str(tmp_path / "b"), dry_run=False,
                sets={**sets, "tasks.vqa.batch_size": "16"}, log=lambda _: None)
  assert len(timed) == 2


def test_step_time_fingerprint_is_the_command_but_run_length_seed_and_start():
  from experiments import wallclock
  study = _budget_study()
  sets = {"data.dir": _DATA_DIR}
  base = wallclock.fingerprint(run.resolve(study, study.arm("slow"), 0, "r",
                                           sets)[1])
  for seed, root, steps in ((3, "r", None), (0, "other", 5)):
    command = run.resolve(study, study.arm("slow"), seed, root, sets, steps=steps)[1]
    assert wallclock.fingerprint(command) == base, command
  wider = run.resolve(study, study.arm("slow"), 0, "r",
                      {**sets, "model.dec_width": "64"})[1]
  assert wallclock.fingerprint(wider) != base


def test_step_seconds_times_each_config(tmp_path):
  from experiments import wallclock
  study = _budget_study()
  sets = config_lib.parse_overrides(SETS)
  configs = {a.name: run.resolve(study, a, 0, str(tmp_path), sets)[0]
             for a in study.arms}
  # The reference's plain step (as the budget times it): one instrumented
  # step to compile, not two.
  configs["ref"].interference.enabled = False
  # A config training fewer tasks times its own part of the batch.
  narrow = ml_collections.ConfigDict(configs["ref"].to_dict())
  del narrow.tasks[sorted(narrow.tasks)[-1]]
  configs["narrow"] = narrow
  seconds = wallclock.step_seconds(configs, steps=2, rounds=1,
                                   devices=jax.devices()[:1])
  assert sorted(seconds) == ["narrow", "ref", "slow"]
  assert all(0 < s < 60 for s in seconds.values())
  assert wallclock.budget_steps(100, 0.1, 0.3) == 33
  assert wallclock.budget_steps(1, 0.1, 10.0) == 1
  # Neither of two configs' tasks includes the other's: no one batch serves.
  other = ml_collections.ConfigDict(configs["ref"].to_dict())
  del other.tasks[sorted(other.tasks)[0]]
  with pytest.raises(ValueError, match="include every other's"):
    wallclock.step_seconds({"narrow": narrow, "other": other})


def test_task_overrides_reach_only_the_arms_with_the_task():
  dilemma = studies.get("dilemma")
  sets = {"tasks.caption.batch_size": "8"}
  gen, _ = run.resolve(dilemma, dilemma.arm("gen_only"), 0, "x", sets)
  und, command = run.resolve(dilemma, dilemma.arm("und_only"), 0, "x", sets)
  assert gen.tasks.caption.batch_size == 8
  assert "caption" not in und.tasks and "tasks.caption" not in command
  # Single-objective arms still evaluate every task, with the joint decoder.
  assert list(und.eval_tasks) == ["caption", "vqa", "ita"]


def test_demo_prints_arms_rounds_stages_and_examples(tmp_path):
  from experiments import demo
  root = str(tmp_path)
  loop = {"r3/round0/v_strict": 0.5, "r3/round0/f1": 0.8,
          "r3/round1/v_strict": 0.75, "r3/round1/f1": 0.9,
          "r3/round1/improved": 0.25, "r3/round1/worse": 0.0,
          "r3/round1/stop_rate": 0.5, "r3/round3/f1": 0.625,
          "r3/round3/v_strict": 0.75, "r3/refine_given_edit": 0.4}
  for arm, f1 in (("joint", 0.25), ("r3_sft", 0.375)):
    d = os.path.join(root, "demo", "runs", arm, "seed0")
    os.makedirs(d)
    metrics = {"caption/f1": f1, "train_seconds": 12.0,
               **(loop if arm == "r3_sft" else {})}
    with open(os.path.join(d, "result.json"), "w") as f:
      json.dump({"arm": arm, "seed": 0, "command": "c", "metrics": metrics}, f)
  lines = demo.table(root).splitlines()
  assert lines[0].split()[:3] == ["arm", "caption", "F1"]
  rows = {l.split()[0]: l.split() for l in lines[2:]}
  assert list(rows) == ["joint", "r3_sft"]
  assert rows["joint"][1:3] == ["0.250", "-"]
  assert rows["r3_sft"][1:3] == ["0.375", "(+0.125)"]
  assert rows["r3_sft"][-3:] == ["0.625", "0.750", "12"]
  # Rounds 0 and 1 (round 3 has no V_frac changes here), then the stages.
  text = demo.rounds(loop).splitlines()
  assert [l.split()[0] for l in text[2:4]] == ["0", "1"]
  assert text[3].split() == ["1", "0.750", "0.900", "0.250", "0.000", "0.500"]
  assert "refine told the verifier's edit writes it: 0.400" in text
  # One example of each kind: better, worse, stopped on its draft.
  ex = [{"index": 0, "captions": ["a", "b", "b"], "reflections": ["e", "s"],
         "stopped": True, "v_strict": [0, 1, 1], "v_frac": [0.5, 1, 1]},
        {"index": 1, "captions": ["c", "d", "d"], "reflections": ["e", "s"],
         "stopped": True, "v_strict": [1, 0, 0], "v_frac": [1, 0.5, 0.5]},
        {"index": 2, "captions": ["f", "f", "f"], "reflections": ["s"],
         "stopped": True, "v_strict": [1, 1, 1], "v_frac": [1, 1, 1]}]
  path = os.path.join(root, "ex.jsonl")
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in ex)
  shown = demo.examples(path).splitlines()
  assert [l for l in shown if l.startswith("[")] == [
      "[better] test image 0", "[worse] test image 1",
      "[stopped] test image 2"]
  assert shown[1:5] == ["  draft      a  (V_strict 0)", "  reflect 1  e",
                        "  refine 1   b  (V_strict 1)", "  reflect 2  s"]


def test_commands_show_paths_inside_the_repository_relative(tmp_path):
  inside = os.path.join(run.ROOT, "experiments", "x", "runs", "a", "seed0")
  assert run.shown(inside) == os.path.join("experiments", "x", "runs", "a",
                                           "seed0")
  assert run.shown(str(tmp_path)) == str(tmp_path)
  study = studies.get("dilemma")
  _, command = run.resolve(study, study.arm("joint"), 0,
                           os.path.join(run.ROOT, "experiments"), {})
  assert "--workdir=experiments/dilemma/runs/joint/seed0" in command
  assert command[-1] == "--config.init_from=experiments/dilemma/runs/base/seed0"


def test_seed_option_runs_only_the_named_seeds(tmp_path, capsys):
  root = str(tmp_path)
  assert run.main(["tiny", "--arms=first", "--seed=1", "--seed=3",
                   f"--root={root}", "--dry-run"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert ["seed=1 " in lines[0], "seed=3 " in lines[1], len(lines)] == [
      True, True, 2]
  assert run.main(["tiny", "--seed=1", "--seeds=2", f"--root={root}",
                   "--dry-run"]) == 2
  assert "not both" in capsys.readouterr().err
  assert run.main(["tiny", "--seed=-1", f"--root={root}", "--dry-run"]) == 2


def test_insert_competence_adds_the_start_arms_gate_table_once(tmp_path):
  root = str(tmp_path)
  for s in range(2):
    _fake(root, "first", s, 0.5, 0.7)
    _fake(root, "frozen", s, 0.6, 0.7)
  path = os.path.join(root, "tiny", "RESULTS.md")
  with open(path, "w") as f:
    f.write("# Study\n\n## Change from `first`\n\nrows\n")
  for _ in range(2):  # a second insert replaces the first
    report.insert_competence(root, "tiny", "first")
  text = open(path).read()
  assert text.count("## Competence of the start arm") == 1
  assert text.index("## Competence") < text.index("## Change from `first`")
  assert "`first`'s competence gates on the test split (mean over 2 seed(s)" in text
  assert "| VQA overall | 0.700 |  |  |" in text
  assert "| caption fact F1 | 0.500 | >= 0.90 | FAIL |" in text


def _figure(fig) -> list[dict]:
  """What a figure was given to draw, per axes: titles, labels, ticks, the
  lines' data, images' arrays and scales, texts and collections' paths."""
  out = []
  for ax in fig.axes:
    out.append({
        "title": ax.get_title(), "x": ax.get_xlabel(), "y": ax.get_ylabel(),
        "ticks": [[t.get_text() for t in ax.get_xticklabels()],
                  [t.get_text() for t in ax.get_yticklabels()]],
        "lines": [(l.get_label(), l.get_linestyle(),
                   np.asarray(l.get_xdata(), float),
                   np.asarray(l.get_ydata(), float)) for l in ax.lines],
        "images": [(np.ma.filled(im.get_array(), np.nan), im.get_clim())
                   for im in ax.images],
        "texts": [(t.get_text(), t.get_position()) for t in ax.texts],
        "collections": [[np.asarray(p.vertices) for p in c.get_paths()]
                        for c in ax.collections]})
  return out


def _git_ignored(root: str, study: str) -> list[str]:
  """The files under <root>/<study> that git would not keep, by the
  repository's .gitignore rules (as if <root> were experiments/)."""
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, study))
           for f in fs]
  shown = {os.path.join("experiments", os.path.relpath(f, root)): f
           for f in files}
  out = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"],
                       cwd=run.ROOT, input="\n".join(shown), text=True,
                       capture_output=True, check=False)
  assert out.returncode in (0, 1), out.stderr  # 1: nothing ignored
  return [shown[p] for p in out.stdout.splitlines()]


def _rebuilt_from_git(root: str, study: str) -> str:
  """The RESULTS.md that collect writes from the files of <root>/<study>
  that git keeps, copied to a scratch directory (plots aside)."""
  import tempfile  # noqa: PLC0415
  src = os.path.join(root, study)
  ignored = set(_git_ignored(root, study))
  with tempfile.TemporaryDirectory() as scratch:
    for d, _, fs in os.walk(src):
      for f in fs:
        path = os.path.join(d, f)
        if path not in ignored and not f.endswith(".png"):
          dst = os.path.join(scratch, os.path.relpath(path, root))
          os.makedirs(os.path.dirname(dst), exist_ok=True)
          shutil.copy(path, dst)
    with open(report.collect(scratch, study)) as f:
      return f.read()


def _recollected_from_git(root: str, study: str) -> str:
  """The RESULTS.md that recollect_statistics makes of the committed one
  from the files of <root>/<study> that git keeps, in a scratch copy."""
  import tempfile  # noqa: PLC0415
  src = os.path.join(root, study)
  ignored = set(_git_ignored(root, study))
  with tempfile.TemporaryDirectory() as scratch:
    shutil.copytree(src, os.path.join(scratch, study),
                    ignore=lambda d, fs: [f for f in fs
                                          if os.path.join(d, f) in ignored])
    with open(report.recollect_statistics(scratch, study)) as f:
      return f.read()


def test_report_from_what_git_keeps_is_the_report_from_the_logs(
    tiny_study, tmp_path, monkeypatch):
  """The tiny study (a copy of its root: this test removes files): its
  RESULTS.md, and the data its plots are given, are the same after every
  file git does not keep is removed from runs/ (metrics.jsonl, checkpoints,
  tb/, ...)."""
  root = str(tmp_path / "copy")
  shutil.copytree(tiny_study[2], root)
  runs = {a: os.path.join(root, "tiny", "runs", a, "seed0")
          for a in ("first", "frozen")}
  for wd in runs.values():  # the runner wrote each run's series
    path = os.path.join(wd, "series.csv")
    assert open(path).readline().endswith("values float32\n")
    kept = interference.read_series(path)
    assert list(kept.index) == [1, 3, 4]  # the first, every 2nd, the last
    assert any(k.startswith("group/") for k in kept)
    logged = interference.load(wd)
    np.testing.assert_array_equal(
        kept["interf/cos/caption:vqa"],
        logged["interf/cos/caption:vqa"].to_numpy()[[0, 2, 3]])

  figures = []
  close = report.plt.close
  monkeypatch.setattr(report.plt, "close", lambda fig: (
      figures.append(_figure(fig)), close(fig)))

  def collect() -> tuple[str, list]:
    figures.clear()
    with open(report.collect(root, "tiny")) as f:
      return f.read(), list(figures)

  text, plots = collect()
  assert "## Gradient cosine by parameter group" in text
  assert "Not rebuildable" not in text and len(plots) == 3
  assert _rebuilt_from_git(root, "tiny") == text  # from a copy

  ignored = [p for p in _git_ignored(root, "tiny")
             if os.sep + "runs" + os.sep in p]
  assert {os.path.basename(p) for p in ignored} >= {
      "metrics.jsonl", "interference.json"}
  for p in ignored:
    os.remove(p)
  kept = {a: sorted(f for _, _, fs in os.walk(wd) for f in fs)
          for a, wd in runs.items()}
  assert kept == {"first": ["config.json", "params.npz", "result.json",
                            "series.csv"],
                  "frozen": ["config.json", "result.json", "series.csv"]}
  again, plots_again = collect()
  assert again == text
  np.testing.assert_equal(plots_again, plots)

  # A run with neither its log nor its series is named where it is missing.
  os.remove(os.path.join(runs["frozen"], "series.csv"))
  text = collect()[0]
  assert ("Not rebuildable from git: 1 of the 2 runs have neither "
          "metrics.jsonl nor series.csv") in text
  assert "`runs/frozen/seed0`" in text


def test_series_round_trips_exactly(tmp_path):
  wd = str(tmp_path)
  steps = range(10, 60, 10)
  with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
    for i, step in enumerate(steps):
      row = {"step": step, "loss": 1.0, "interf/cos/a:b": 0.1 * i - 0.2,
             "group/enc/block0/cos/a:b": float(np.float32(i / 3)),
             "group/dec/head/cos/a:b": 1e-30 * i, "lr": 0.5}
      if i != 2:
        row["weights/a"] = math.pi * i
      f.write(json.dumps(row) + "\n")
      f.write(json.dumps({"step": step, "validation/x": 1.0}) + "\n")
  with open(os.path.join(wd, "interference.json"), "w") as f:
    json.dump({"groups": ["dec/head", "enc/block0"]}, f)
  made = interference.series_of(interference.load(wd))
  assert list(made) == ["interf/cos/a:b", "weights/a",
                        "group/dec/head/cos/a:b", "group/enc/block0/cos/a:b"]
  path = interference.write_series(wd)
  assert open(path).readline().endswith("values float64\n")  # pi is not float32
  os.remove(os.path.join(wd, "metrics.jsonl"))
  os.remove(os.path.join(wd, "interference.json"))
  back = interference.series(wd)
  pd.testing.assert_frame_equal(back, made, check_exact=True)
  assert math.isnan(back.loc[30, "weights/a"])
  assert interference.groups(back) == ["dec/head", "enc/block0"]
  assert interference.has_interference(wd)


def test_rl_series_keep_each_stage_apart():
  """Beyond SERIES_ROWS, an R3-RL run's series keeps an even subsample of
  each stage's steps, first and last included: every 6th of 1,000
  alternating steps would have kept root steps only."""
  steps = np.arange(1, 1001)
  df = pd.DataFrame({"rl/stage": (steps % 2 == 0).astype(float),
                     "rl/reward": steps / 1000.0},
                    index=pd.Index(steps, name="step"))
  made = interference.series_of(df)
  assert len(made) <= interference.SERIES_ROWS
  for code, first, last in ((0.0, 1, 999), (1.0, 2, 1000)):
    kept = made.index[made["rl/stage"] == code]
    own = steps[(steps % 2 == 0) == bool(code)]
    assert list(kept) == list(own[interference.subsample(
        500, interference.SERIES_ROWS // 2)])
    assert (kept[0], kept[-1]) == (first, last)
    assert len(set(np.diff(kept[:-1]))) == 1  # even, but for the last
  assert list(made["rl/reward"]) == list(made.index / 1000.0)
  short = df.iloc[:150]  # up to SERIES_ROWS: every row
  assert list(interference.series_of(short).index) == list(short.index)


def test_mark_unrebuildable_notes_sections_made_from_logs_git_lacks(tmp_path):
  root = str(tmp_path)
  for s in range(2):
    _fake(root, "first", s, 0.5, 0.7)
  path = os.path.join(root, "tiny", "RESULTS.md")
  text = ("# Study\n\n## Caption F1 vs VQA accuracy\n\nplot\n\n"
          "## Gradient cosine by parameter group\n\nPer-group cosine\n\n"
          "## Hardware\n")
  with open(path, "w") as f:
    f.write(text)
  for _ in range(2):  # once
    assert report.mark_unrebuildable(root, "tiny") == [
        "## Gradient cosine by parameter group"]
  marked = open(path).read()
  assert marked == text.replace(
      "parameter group\n\n", f"parameter group\n\n{report.LOGS_GONE}\n\n")
  # With every run's series there, nothing is marked.
  for s in range(2):
    open(os.path.join(root, "tiny", "runs", "first", f"seed{s}",
                      "series.csv"), "w").close()
  with open(path, "w") as f:
    f.write(text)
  assert report.mark_unrebuildable(root, "tiny") == []
  assert open(path).read() == text


def test_committed_reports_are_rebuilt_from_git_or_say_they_cannot_be():
  """Every study's RESULTS.md in experiments/: where each run has its
  series.csv, collect on the files git keeps writes it again exactly; where
  some run has not (studies whose logs are gone), the sections made from
  result.json are written again exactly (recollect_statistics) and each
  section made from the logs says that git cannot rebuild it."""
  experiments = os.path.join(run.ROOT, "experiments")
  checked = []
  for name in sorted(studies.STUDIES):
    path = os.path.join(experiments, name, "RESULTS.md")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      text = f.read()
    results = report.load(experiments, name)
    if all(os.path.exists(os.path.join(r["workdir"], "series.csv"))
           for r in results):
      checked.append((name, "rebuilt"))
      assert _rebuilt_from_git(experiments, name) == text, name
      continue
    assert _recollected_from_git(experiments, name) == text, name
    for head in report.LOG_SECTIONS:
      if head + "\n" in text:
        section = text.split(head + "\n")[1].split("\n## ")[0]
        assert report.LOGS_GONE in section, (name, head)
        checked.append((name, head))
  assert checked


def test_cosine_section_without_per_group_cosines(tmp_path):
  """Runs that log only R3-RL's global cosines (rl:<task>, no interference
  statistics) get the global table and the curves, no per-group figure."""
  wd = tmp_path / "runs" / "r3_rl" / "seed0"
  wd.mkdir(parents=True)
  with open(wd / "metrics.jsonl", "w") as f:
    for step in range(1, 11):
      f.write(json.dumps({"step": step, "loss": 1.0,
                          "interf/cos/rl:vqa": 0.1 * step - 0.5}) + "\n")
  text = "\n".join(report._cosine_section(str(tmp_path),
                                          {"r3_rl": [str(wd)]}))
  assert "No run logged per-group cosines." in text
  assert "cosine_groups.png" not in text
  assert "| `r3_rl` | 0.0500 |" in text  # the mean over all 10 steps
  assert sorted(os.listdir(tmp_path)) == ["cosine_over_training.png", "runs"]


def test_rl_section_means_root_and_branch_steps_per_chunk(tmp_path):
  """R3-RL's reward table: per 20 steps, the root steps' (odd) and branch
  steps' (even) reward and V_strict means, the branch stop rate; one seed's
  series, kept in series.csv, gives the same table without its log."""
  wd = tmp_path / "runs" / "r3_rl" / "seed0"
  wd.mkdir(parents=True)
  with open(wd / "metrics.jsonl", "w") as f:
    for step in range(1, 41):
      root = step % 2 == 1
      row = {"step": step, "loss": 1.0, "rl/stage": 0.0 if root else 1.0,
             "rl/reward": 1.0 + step / 100, "rl/v": step / 100}
      if not root:
        row.update({"rl/stop_rate": 0.5, "rl/v_prev": 0.0})
      f.write(json.dumps(row) + "\n")
  section = report._rl_section(str(tmp_path), {"r3_rl": [str(wd)]})
  rows = [l for l in section if l.startswith("| `r3_rl`")]
  # steps 1-20: root steps 1, 3, ..., 19 (mean 10), branch 2, ..., 20 (11)
  assert rows == ["| `r3_rl` | 1-20 | 1.100 | 0.100 | 1.110 | 0.110 | 0.500 |",
                  "| `r3_rl` | 21-40 | 1.300 | 0.300 | 1.310 | 0.310 | 0.500 |"]
  assert os.path.exists(tmp_path / "rl_curves.png")
  interference.write_series(str(wd))
  os.remove(wd / "metrics.jsonl")
  assert report._rl_section(str(tmp_path), {"r3_rl": [str(wd)]}) == section


def test_rl_section_gives_chain_steps_their_own_columns(tmp_path):
  """A chain-mode run (every step rl/stage 2) gets chain columns beside a
  tree run's root and branch columns; each run's other columns are "-"."""
  dirs = {}
  for arm, chain in (("r3_rl", False), ("r3_rl_chain", True)):
    wd = tmp_path / "runs" / arm / "seed0"
    wd.mkdir(parents=True)
    with open(wd / "metrics.jsonl", "w") as f:
      for step in range(1, 21):
        stage = 2.0 if chain else float(step % 2 == 0)
        row = {"step": step, "loss": 1.0, "rl/stage": stage,
               "rl/reward": 1.0 + step / 100, "rl/v": step / 100}
        if stage:
          row["rl/stop_rate"] = 0.25 if chain else 0.5
        f.write(json.dumps(row) + "\n")
    dirs[arm] = [str(wd)]
  section = report._rl_section(str(tmp_path), dirs)
  head = next(l for l in section if l.startswith("| arm"))
  assert head == ("| arm | steps | root reward | root v | branch reward | "
                  "branch v | branch stop_rate | chain reward | chain v | "
                  "chain stop_rate |")
  rows = [l for l in section if l.startswith("| `")]
  assert rows == [
      "| `r3_rl` | 1-20 | 1.100 | 0.100 | 1.110 | 0.110 | 0.500 | - | - | - |",
      "| `r3_rl_chain` | 1-20 | - | - | - | - | - | 1.105 | 0.105 | 0.250 |"]
  assert any("chain steps (rl.mode chain)" in l for l in section)


def test_stage_section_pairs_the_loops_stages_with_the_reference():
  """Arms with R3 scores minus the reference, paired over seeds, Holm over
  the section's comparisons; an arm without R3 scores has no row."""
  from scipy import stats
  up = np.array([0.1, 0.3, 0.2])
  results = [{"arm": a, "seed": s, "metrics": {"caption/f1": 0.5} if a ==
              "joint" else {"r3/over_edit": 0.2 + (up[s] if a == "r3_rl"
                                                  else 0.0),
                            "r3/false_stop": 0.3}}
             for a in ("r3_sft", "r3_rl", "joint") for s in range(3)]
  text = "\n".join(report._stage_section(results, ["r3_sft", "r3_rl",
                                                   "joint"], "r3_sft"))
  assert "these 2 comparisons" in text and "`joint`" not in text
  half = stats.t.ppf(0.975, 2) * up.std(ddof=1) / np.sqrt(3)
  p = 2 * stats.t.sf(up.mean() / (up.std(ddof=1) / np.sqrt(3)), 2)
  rows = [l for l in text.splitlines() if l.startswith("| `")]
  row = next(l for l in rows if "over-edit" in l)
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[0] == "`r3_rl`"
  assert cells[2] == (f"{up.mean():+.4f} [{up.mean() - half:+.4f}, "
                      f"{up.mean() + half:+.4f}]")
  assert cells[4] == f"{p:.3g}" and cells[5].split()[0] == f"{2 * p:.3g}"
  row = next(l for l in rows if "false stop" in l)
  assert len(rows) == 2 and "+0.0000 [+0.0000, +0.0000]" in row
  assert row.rstrip(" |").endswith("1")  # Holm p of a zero difference
  assert report._stage_section(results, ["joint"], "r3_sft") == []


def test_loop_section_pairs_the_last_round_with_drafts_and_other_arms():
  """Each loop arm's captions after its last round minus its own drafts and
  minus the captions of the arms set against it, seed by seed; Holm over
  the section; an arm without the loop's scores is left out."""
  from scipy import stats
  gain = np.array([0.02, 0.05, 0.03])
  results = [{"arm": "joint", "seed": s,
              "metrics": {"caption/v_strict": 0.61, "caption/f1": 0.85}}
             for s in range(3)]
  results += [{"arm": "r3_sft", "seed": s, "metrics": {
      "caption/v_strict": 0.6, "caption/f1": 0.8,
      "r3/round0/v_strict": 0.6, "r3/round0/f1": 0.8,
      "r3/round1/v_strict": 0.0, "r3/round1/f1": 0.0,
      "r3/round2/v_strict": 0.6 + gain[s], "r3/round2/f1": 0.8}}
              for s in range(3)]
  text = "\n".join(report._loop_section(
      results, {"r3_sft": ("joint",), "joint": ()}))
  assert "(round 2)" in text and "these 4 comparisons" in text
  rows = {tuple(c.strip() for c in l.strip("|").split("|")[:2]):
          [c.strip() for c in l.strip("|").split("|")[2:]]
          for l in text.splitlines() if l.startswith("| `")}
  assert set(rows) == {("`r3_sft`", f"{m}: after the loop minus {o}")
                       for m in ("V_strict", "F1")
                       for o in ("its drafts", "`joint`")}
  p = stats.ttest_1samp(gain, 0.0).pvalue
  got = rows["`r3_sft`", "V_strict: after the loop minus its drafts"]
  assert got[0].startswith(f"{gain.mean():+.4f} [") and got[1] == "3"
  assert got[2] == f"{p:.3g}"
  got = rows["`r3_sft`", "V_strict: after the loop minus `joint`"]
  assert got[0].startswith(f"{gain.mean() - 0.01:+.4f} [")
  # F1 after the loop equals the drafts' in every seed: p 1.
  assert rows["`r3_sft`", "F1: after the loop minus its drafts"][2] == "1"
  assert report._loop_section(results, {"joint": ("r3_sft",)}) == []


def test_understanding_section_is_each_arm_minus_the_exported_start(tmp_path):
  """VQA by type and ITA, each arm minus the start's one score under every
  seed (a one-sample t over seeds); arms on another world or scored on
  fewer questions are left out."""
  from scipy import stats
  c = config_lib.defaults().to_dict()
  world = c["world"]
  base = tmp_path / "start"
  base.mkdir()
  start = {**{k: 0.9 for k, _ in report.UNDERSTANDING},
           "vqa/count": 600.0, "ita/count": 400.0}
  (base / "result.json").write_text(json.dumps(
      {"metrics": start, "max_objects": world["max_objects"],
       "run": "r", "step": 1}))
  (base / "config.json").write_text(json.dumps(c))
  lift = np.array([0.01, 0.03, 0.02])
  results = []
  for arm, w, data, n in (
      ("a", world, c["data"], 600.0),
      ("far", {**world, "image_size": 32}, c["data"], 600.0),
      ("seed", world, {**c["data"], "seed": 1}, 600.0),
      ("slice", world, c["data"], 60.0)):
    for s in range(3):
      wd = tmp_path / arm / str(s)
      wd.mkdir(parents=True)
      (wd / "config.json").write_text(json.dumps({**c, "world": w,
                                                  "data": data}))
      results.append({"arm": arm, "seed": s, "workdir": str(wd), "metrics": {
          **start, "vqa/qtype/relation/accuracy": 0.9 + lift[s],
          "vqa/count": n}})
  text = "\n".join(report._understanding_section(
      results, ["a", "far", "seed", "slice"], str(base)))
  rows = [[c.strip() for c in l.strip("|").split("|")]
          for l in text.splitlines() if l.startswith("| `")]
  assert {r[0] for r in rows} == {"`a`"} and len(rows) == 8
  assert "these 8 comparisons" in text and "VQA relation 0.9000" in text
  rel = next(r for r in rows if r[1] == "VQA relation")
  assert rel[2].startswith(f"{lift.mean():+.4f} [")
  assert rel[4] == f"{stats.ttest_1samp(lift, 0.0).pvalue:.3g}"
  assert all(r[4] == "1" for r in rows if r is not rel)
  assert report.CONSTANT not in text  # no row constant but for zero
  # ITA one question up in every seed: the sign test's p, and the note.
  for r in results:
    r["metrics"]["ita/accuracy"] = 0.9025
  text = "\n".join(report._understanding_section(results, ["a"], str(base)))
  assert ("| `a` | ITA accuracy | +0.0025 [+0.0025, +0.0025] | 3 | 0.25 |"
          in text)
  assert report.CONSTANT in text


def test_rl_reward_is_paired_with_the_rate_0_arm_seed_by_seed(tmp_path):
  """Per seed, the mean reward of each stage over each half of the steps,
  R3-RL minus the rate-0 arm; paired over seeds (t interval, p, Holm)."""
  from scipy import stats
  lift = {0: 0.10, 1: 0.30, 2: 0.20}  # root reward above rate 0, 2nd half
  dirs = {}

  def write(arm, stage, reward):  # 8 steps of each seed: stage(step), ...
    for seed, up in lift.items():
      wd = tmp_path / arm / f"seed{seed}"
      wd.mkdir(parents=True)
      with open(wd / "metrics.jsonl", "w") as f:
        for step in range(1, 9):
          f.write(json.dumps({"step": step, "loss": 1.0,
                              "rl/stage": stage(step),
                              "rl/reward": reward(seed, up, step),
                              "rl/v": 0.5}) + "\n")
      dirs.setdefault(arm, []).append(str(wd))

  for arm in ("r3_rl", "r3_rl_lr0"):
    write(arm, lambda step: float(step % 2 == 0),
          lambda seed, up, step, arm=arm: 1.0 + seed / 10 + (
              up if arm == "r3_rl" and step % 2 and step > 4 else 0.0))
  text = "\n".join(report._rl_baseline_section(dirs, "r3_rl_lr0"))
  assert "4 comparisons" in text
  d = np.array(list(lift.values()))
  half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
  p = 2 * stats.t.sf(d.mean() / (d.std(ddof=1) / np.sqrt(3)), 2)
  row = next(l for l in text.splitlines() if "root reward, steps 5-8" in l)
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[2] == (f"{d.mean():+.4f} [{d.mean() - half:+.4f}, "
                      f"{d.mean() + half:+.4f}]")
  assert cells[3] == "3" and cells[4] == f"{p:.3g}"
  # Holm over 4 comparisons: the smallest p of 4 (the others are equal
  # rewards, p 1) is multiplied by 4.
  assert cells[5].split()[0] == f"{min(1.0, 4 * p):.3g}"
  row = next(l for l in text.splitlines() if "root reward, steps 1-4" in l)
  assert "+0.0000 [+0.0000, +0.0000]" in row
  assert report._rl_baseline_section({"r3_rl": dirs["r3_rl"]},
                                     "r3_rl_lr0") == []
  assert report._rl_baseline_section(dirs, None) == []
  # A chain arm is paired with the chain arm at rate 0 only: a tree arm and
  # a chain arm log no stage in common.
  for arm in ("r3_rl_chain", "r3_rl_chain_lr0"):
    write(arm, lambda step: 2.0,
          lambda seed, up, step, arm=arm: 1.0 + (
              up if arm == "r3_rl_chain" and step > 4 else 0.0))
  text = "\n".join(report._rl_baseline_section(
      dirs, ("r3_rl_lr0", "r3_rl_chain_lr0")))
  assert "these 6 comparisons" in text
  rows = [l for l in text.splitlines() if l.startswith("| `")]
  assert [r.split("|")[1:3] for r in rows if "chain" in r] == [
      [" `r3_rl_chain` ", " chain reward, steps 1-4 "],
      [" `r3_rl_chain` ", " chain reward, steps 5-8 "]]
  row = next(l for l in rows if "chain reward, steps 5-8" in l)
  assert row.split("|")[3].strip() == cells[2]  # the same lifts as above
  with pytest.raises(ValueError, match="rate-0 arms 'r3_rl_lr0' and 'r3_rl' "
                     "both log 'root reward, steps 1-4'"):
    report._rl_baseline_section(dirs, ("r3_rl_lr0", "r3_rl"))
