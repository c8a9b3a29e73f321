"""The shipped competent base (experiments/competence/base): its recorded
gate table passes, and its parameters reproduce the metrics its export
recorded on a fixed slice of the test split."""

import json
import os

import pytest

from r3jax.analysis import competence

BASE = os.path.join("experiments", "competence", "base")
# Greedy decoding on another CPU may break a near-tie the other way; one
# caption, question or pair decided differently moves a slice mean by at
# most 1/64 (64 images: 64 captions, 384 questions, 256 ITA pairs).
TOLERANCE = 1 / 64


def _result() -> dict:
  with open(os.path.join(BASE, "result.json")) as f:
    return json.load(f)


def test_the_recorded_gate_table_passes():
  r = _result()
  assert r["competent"] and r["failed"] == []
  assert competence.passes(r["metrics"], r["max_objects"])
  assert r["step"] == json.load(open(os.path.join(BASE, "config.json")))[
      "total_steps"]


def test_the_base_reproduces_its_recorded_slice_metrics():
  """Loading checks params.npz against its fingerprint; each gated metric,
  and the written positions' and traces' accuracy, agrees with the slice
  metrics the export recorded."""
  r = _result()
  want = competence.with_derived(r["slice"]["metrics"])
  got = competence.with_derived(competence.evaluate(
      BASE, r["slice"]["split"], r["slice"]["max_examples"]))
  keys = [row.key for row in competence.rows(want, r["max_objects"])]
  keys += [k for k in want if k.endswith(("positions/accuracy",
                                          "trace/accuracy"))]
  assert len(keys) >= 12 and all(want.get(k) is not None for k in keys)
  for key in keys:
    assert got[key] == pytest.approx(want[key], abs=TOLERANCE), key
