"""The gradient-conflict notebook runs end to end on a tiny instrumented run."""

import os

import jax
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from r3jax.interference import analysis
from r3jax.train import loop

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks",
                        "gradient_conflict.ipynb")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  from conftest import tiny_config
  c = tiny_config()
  c.total_steps, c.log_every_steps, c.eval_every_steps = 6, 1, 100
  c.final_eval.max_examples = 4
  workdir = str(tmp_path_factory.mktemp("run"))
  loop.train_and_evaluate(c, workdir, jax.devices()[:1])
  return workdir


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


def test_notebook_executes(run_dir, monkeypatch):
  monkeypatch.setenv("R3JAX_WORKDIR", run_dir)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}
                 ).execute()
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
  assert "6 logged steps (1..6)" in text
  images = sum("image/png" in o.get("data", {}) for c in nb.cells
               if c.cell_type == "code" for o in c.get("outputs", []))
  assert images >= 3
