"""r3jax.analysis and the notebooks on it, against tiny runs and a
fabricated study: the gradient-conflict notebook on an instrumented run, the
trade-off notebook and the study report on a study of fabricated results
over real run directories, the R3-rounds notebook on a tiny R3 run."""

import glob
import json
import math
import os
import shutil
import types

import jax
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from conftest import tiny_config
from experiments import report
from r3jax.analysis import interference as analysis
from r3jax.analysis import rounds, study
from r3jax.r3 import loop as r3_loop
from r3jax.run import loop
from r3jax.train import metrics as metrics_lib
from test_r3_loop import _oracle

NOTEBOOKS = os.path.join(os.path.dirname(__file__), "..", "notebooks")
NOTEBOOK = os.path.join(NOTEBOOKS, "gradient_conflict.ipynb")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  c = tiny_config()
  c.interference.enabled = True  # the analysis reads its statistics
  c.total_steps, c.log_every_steps, c.eval_every_steps = 6, 1, 100
  c.final_eval.max_examples = 4
  workdir = str(tmp_path_factory.mktemp("run"))
  loop.train_and_evaluate(c, workdir, jax.devices()[:1])
  return workdir


@pytest.fixture(scope="module")
def r3_dir(tmp_path_factory):
  """A tiny R3 run whose final evaluation decodes with the verifier oracle
  (drafts with one corruption, the verifier's edits, a wrong stop on test
  example 0), so that its scores are not all zero."""
  c = tiny_config(("caption", "reflect", "refine"))
  c.total_steps, c.log_every_steps, c.eval_every_steps = 2, 1, 100
  c.interference.enabled = False
  c.final_eval.max_examples = c.final_eval.batch_size = 8
  run = r3_loop.R3Loop.run

  def oracle_run(self, params, records, seed=0):
    world = types.SimpleNamespace(tokenizer=self._tok, world=self._world)
    self._decode = _oracle(world, records, fail_on={0})[0]
    self._packed = "repack"  # rounds through _decode: the oracle's
    return run(self, params, records, seed)

  workdir = str(tmp_path_factory.mktemp("r3"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(r3_loop.R3Loop, "run", oracle_run)
    loop.train_and_evaluate(c, workdir, jax.devices()[:1])
  return workdir


# Fabricated "dilemma" results (its start arm is "base"): arm -> seed ->
# (caption F1, VQA accuracy, wall seconds).
RESULTS = {"base": {0: (0.50, 0.70, 10.0), 1: (0.54, 0.72, 20.0)},
           "gen_only": {0: (0.60, 0.60, 5.0), 1: (0.66, 0.62, 5.0)},
           "joint": {0: (0.55, 0.69, 30.0), 1: (0.61, 0.73, 30.0)}}
SHIFT = 0.1  # seed 1's global cosines are seed 0's (the real run's) + SHIFT


def _shifted(src: str, dst: str, shift: float):
  rows = metrics_lib.read(src)
  with open(os.path.join(dst, "metrics.jsonl"), "w") as f:
    for r in rows:
      f.write(json.dumps({k: v + shift if k.startswith("interf/cos/") else v
                          for k, v in r.items()}) + "\n")


@pytest.fixture(scope="module")
def study_root(tmp_path_factory, run_dir):
  """<root>/dilemma/runs/<arm>/seed<k>/: result.json files with the numbers
  above; base and joint hold the instrumented run's logs (seed 1 shifted),
  gen_only has no interference logs but R3 round scores."""
  root = str(tmp_path_factory.mktemp("studies"))
  for arm, seeds in RESULTS.items():
    for seed, (f1, vqa, wall) in seeds.items():
      wd = os.path.join(root, "dilemma", "runs", arm, f"seed{seed}")
      os.makedirs(wd)
      metrics = {"caption/f1": f1, "vqa/accuracy": vqa}
      if arm == "gen_only":
        metrics.update({f"r3/round{r}/{s}": 0.3 + 0.1 * r + 0.02 * seed
                        for r in range(3) for s in ("f1", "v_strict")})
        metrics.update({"r3/stopped_frac": 0.5, "r3/false_stop": 0.25,
                        "r3/over_edit": 0.125, "r3/mean_rounds": 1.5})
      else:
        for name in ("interference.json", "config.json"):
          shutil.copy(os.path.join(run_dir, name), wd)
        _shifted(run_dir, wd, SHIFT * seed)
      with open(os.path.join(wd, "result.json"), "w") as f:
        json.dump({"study": "dilemma", "arm": arm, "seed": seed,
                   "command": f"cmd {arm} {seed}", "metrics": metrics,
                   "wall_seconds": wall,
                   "hardware": {"device_kind": "cpu", "devices": 1,
                                "cpus": 2}}, f)
  return root


def _execute(name: str, monkeypatch, **env) -> tuple[str, int]:
  """Runs notebooks/<name> with the env vars; (printed text, images)."""
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": NOTEBOOKS}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code"
             for o in c.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs)
  return text, sum("image/png" in o.get("data", {}) for o in outputs)


def test_analysis_reads_the_run(run_dir):
  df = analysis.load(run_dir)
  assert list(df.index) == [1, 2, 3, 4, 5, 6]
  assert analysis.pairs(df) == ["caption:ita", "caption:vqa", "ita:vqa"]
  names = analysis.groups(df)
  assert names[0] == "enc/embed" and names[-1] == "dec/head"
  _, steps, values = analysis.group_matrix(df, "caption:vqa")
  assert values.shape == (len(names), 6) and np.all(np.abs(values) <= 1)
  # Contributions of all groups add up to the global cosine at every step.
  _, _, contrib = analysis.group_matrix(df, "caption:vqa", "contrib")
  np.testing.assert_allclose(contrib.sum(0), df["interf/cos/caption:vqa"],
                             atol=1e-5)
  # Window 1 reproduces the per-step debiased cosine logged by the step.
  got = analysis.debiased_cosine(df, "caption:vqa", window=1)
  logged = df["interf/debiased_cos/caption:vqa"]
  valid = got.notna()
  np.testing.assert_allclose(got[valid], logged[valid], atol=1e-5)
  table = analysis.conflict_table(df)
  assert ("caption:vqa", "global") in table.index
  assert table["conflict@0"].between(0, 1).all()


def test_study_table_and_change_from_start(study_root):
  from experiments import studies
  spec = studies.STUDIES["dilemma"]
  results = study.load(study_root, "dilemma")
  assert study.arms(results, spec) == ["base", "gen_only", "joint"]
  t = study.table(study_root, "dilemma", ["caption/f1", "vqa/accuracy"],
                  spec=spec)
  assert list(t.index) == ["base", "gen_only", "joint"]  # registry order
  assert t.loc["joint", ("caption/f1", "mean")] == pytest.approx(0.58)
  assert t.loc["joint", ("caption/f1", "std")] == pytest.approx(
      0.06 / math.sqrt(2))
  assert t.loc["base", ("vqa/accuracy", "n")] == 2
  d = study.change_table(study_root, "dilemma", spec=spec)  # its start arm
  assert list(d.index) == ["gen_only", "joint"]
  # joint - base per seed: F1 +0.05, +0.07; VQA -0.01, +0.01.
  assert d.loc["joint", ("caption/f1", "mean")] == pytest.approx(0.06)
  assert d.loc["joint", ("caption/f1", "std")] == pytest.approx(
      0.02 / math.sqrt(2))
  assert d.loc["gen_only", ("vqa/accuracy", "mean")] == pytest.approx(-0.1)
  assert d.loc["gen_only", ("vqa/accuracy", "std")] == pytest.approx(
      0, abs=1e-12)
  shown = study.formatted(d[["caption/f1"]], signed=True)
  assert shown.loc["joint", "caption/f1"] == "+0.0600 ± 0.0141"
  assert study.wall_seconds(results) == (
      {"base": 15.0, "gen_only": 5.0, "joint": 30.0}, 100.0)
  by_round = rounds.by_arm(results, "f1")
  assert list(by_round.index) == ["gen_only"]
  np.testing.assert_allclose(by_round.loc["gen_only"], [0.31, 0.41, 0.51])


def test_compare_arms_means_over_seeds(run_dir, study_root):
  dirs = study.workdirs(study.load(study_root, "dilemma"))
  cos = analysis.load(run_dir)["interf/cos/caption:vqa"]
  t = analysis.compare_arms(dirs)
  assert sorted(set(t.index.get_level_values("arm"))) == ["base", "joint"]
  assert t.loc[("joint", "caption:vqa"), "global"] == pytest.approx(
      cos.mean() + SHIFT / 2)
  g = analysis.load(run_dir)["group/dec/head/cos/caption:vqa"]
  half = analysis.compare_arms(dirs, since=0.5)  # steps 4..6
  assert half.loc[("base", "caption:vqa"), "dec/head"] == pytest.approx(
      g.iloc[3:].mean())
  band = analysis.arm_cosine(dirs["joint"], "caption:vqa")
  np.testing.assert_allclose(band["mean"], cos + SHIFT / 2, atol=1e-6)
  np.testing.assert_allclose(band["std"], SHIFT / math.sqrt(2), atol=1e-6)


def test_report_has_changes_cosines_rounds_and_cost(study_root):
  path = report.collect(study_root, "dilemma")
  text = open(path).read()
  lines = text.splitlines()
  changes = lines[lines.index("## Change from `base`"):]
  row = next(l for l in changes if l.startswith("| `joint`"))
  # Caption F1 changes by 6 standard errors of its mean, but over 2 seeds
  # the paired t-test (df 1) gives p = 0.105: not marked. VQA: no change.
  assert "| +0.0600 ± 0.0141 |" in row and "| +0.0000 ± 0.0141 |" in row
  paired = lines[lines.index("## Paired comparisons"):]
  # (The reference is joint: the pair is listed once, as base - joint.)
  row = next(l for l in paired if l.startswith("| `base` | `joint` | caption F1"))
  assert "| -0.0600 [-0.1871, +0.0671] | 2 | 0.105 |" in row
  row = next(l for l in changes if l.startswith("| `gen_only`"))
  # The same fall on both seeds: no t; the sign test's p = 2 / 2^2 = 0.5,
  # not marked, and the note under the paired table says so.
  assert "| -0.1000 ± 0.0000 |" in row  # VQA accuracy
  row = next(l for l in paired
             if l.startswith("| `gen_only` | `base` | VQA accuracy"))
  assert "| -0.1000 [-0.1000, -0.1000] | 2 | 0.5 |" in row
  assert report.CONSTANT in text
  for png in ("pareto.png", "cosine_groups.png", "rounds.png"):
    assert f"]({png})" in text
    assert os.path.getsize(os.path.join(study_root, "dilemma", png)) > 1000
  cos = next(l for l in lines[lines.index(
      "Mean global cosine over training (mean over seeds):"):]
             if l.startswith("| `joint`"))
  mean = analysis.load(os.path.join(study_root, "dilemma", "runs", "base",
                                    "seed0"))["interf/cos/caption:ita"].mean()
  assert cos.split("|")[2].strip() == f"{mean + SHIFT / 2:.4f}"
  assert ("| `gen_only` | 0.500 ± 0.000 | 0.250 ± 0.000 | 0.125 ± 0.000 | "
          "1.500 ± 0.000 |") in text
  assert "Study total: 100.0 s" in text
  link = next(l for l in lines if l.startswith("| `joint` | 30.0 |"))
  rel = link.split("](")[1].split(")")[0]
  assert rel == "runs/joint/seed0/config.json"
  assert os.path.exists(os.path.join(study_root, "dilemma", rel))


def test_r3_examples_match_logged_scores(r3_dir):
  with open(os.path.join(r3_dir, "r3_examples.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  assert [r["index"] for r in rows] == list(range(8))
  logged = rounds.final_metrics(r3_dir)
  df = rounds.scores(logged)
  n_rounds = len(df) - 1
  assert n_rounds >= 1 and all(len(r["captions"]) == n_rounds + 1 for r in rows)
  for r in range(n_rounds + 1):
    for s in ("v_strict", "v_frac", "f1"):
      assert np.mean([x[s][r] for x in rows]) == pytest.approx(
          logged[f"r3/round{r}/{s}"]), (r, s)
      assert df.loc[r, s] == logged[f"r3/round{r}/{s}"]
  # The oracle's drafts are wrong and it fixes them; row 0 stops at once.
  assert df.loc[0, "v_strict"] < 1 and df.loc[n_rounds, "v_strict"] > 0
  assert rows[0]["stopped"] and len(rows[0]["reflections"]) == 1
  assert logged["r3/round1/stop_rate"] == pytest.approx(
      np.mean([r["stopped"] and len(r["reflections"]) == 1 for r in rows]))
  shown = rounds.examples(r3_dir, 2)
  assert [r["index"] for r in shown] == [0, 1]
  assert shown[0]["image"].shape == (32, 32, 3) and shown[0]["reference"]
  # The saved examples score again to the logged scores.
  again = rounds.rescore(r3_dir)
  assert {k: again[k] for k in logged if k in again and "per_example" not in k
          } == pytest.approx({k: logged[k] for k in logged if k in again and
                              "per_example" not in k})
  assert again["r3/refine_right"] == logged["r3/refine_right"]


def test_notebook_executes(run_dir, study_root, monkeypatch):
  text, images = _execute("gradient_conflict.ipynb", monkeypatch,
                          R3JAX_WORKDIR=run_dir, R3JAX_STUDY_ROOT=study_root,
                          R3JAX_STUDY="dilemma")
  assert "6 logged steps (1..6)" in text
  assert "comparing 2 arms: base (2 seeds), joint (2 seeds)" in text
  assert images == 5  # 3 for the run, 2 for the arms


def test_tradeoff_notebook(study_root, monkeypatch):
  text, images = _execute("tradeoff_results.ipynb", monkeypatch,
                          R3JAX_STUDY_ROOT=study_root, R3JAX_STUDY="dilemma")
  assert "study 'dilemma': 6 runs, arms ['base', 'gen_only', 'joint']" in text
  assert "change from start arm 'base'" in text
  # base (0.52, 0.71) is beaten by joint (0.58, 0.71).
  assert "Pareto front: ['gen_only', 'joint']" in text
  assert images == 2  # Pareto plot, cosine heatmap


def test_r3_rounds_notebook(r3_dir, monkeypatch):
  text, images = _execute("r3_rounds.ipynb", monkeypatch,
                          R3JAX_WORKDIR=r3_dir, R3JAX_EXAMPLES="3")
  m = rounds.final_metrics(r3_dir)
  assert (f"V_strict {m['r3/round0/v_strict']:.3f} (draft)") in text
  assert f"false stop {m['r3/false_stop']:.3f}" in text
  assert "3 examples shown" in text
  assert images == 2  # scores by round, examples


def test_notebooks_are_committed_without_outputs():
  paths = glob.glob(os.path.join(NOTEBOOKS, "*.ipynb"))
  assert len(paths) >= 3
  for p in paths:
    nb = nbformat.read(p, as_version=4)
    for c in nb.cells:
      if c.cell_type == "code":
        assert c.outputs == [] and c.execution_count is None, p


def test_arm_summary_takes_runs_that_log_only_the_cosine(tmp_path, run_dir):
  """R3-RL logs interf/cos/rl:<task> alone: no norms, null or group cosines."""
  wd = str(tmp_path / "rl")
  os.makedirs(wd)
  cos = [0.1, -0.3, 0.2, 0.4]
  with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
    for step, c in enumerate(cos, 1):
      f.write(json.dumps({"step": step, "loss": 1.0,
                          "interf/cos/rl:vqa": c}) + "\n")
  t = analysis.arm_summary({"rl": [wd], "joint": [run_dir]}, since=0.5)
  rl = t.loc[("rl", "rl:vqa")]
  assert rl["cos"] == pytest.approx(0.3) and rl["conflict"] == 0.0
  assert all(math.isnan(rl[k]) for k in ("null_a", "norm_ratio", "debiased"))
  assert not math.isnan(t.loc[("joint", "caption:vqa"), "norm_ratio"])
  assert analysis.compare_arms({"rl": [wd]}).loc[
      ("rl", "rl:vqa"), "global"] == pytest.approx(np.mean(cos))
