"""The shipped exports of experiments/competence: the competent base
(`base`) and the R3-testable start (`r3_start`). Each one's recorded gate
verdict holds, and its parameters reproduce the metrics its export recorded
on a fixed slice of the test split."""

import json
import os

import pytest

from r3jax.analysis import competence

EXPORTS = {name: os.path.join("experiments", "competence", name)
           for name in ("base", "r3_start")}
# Greedy decoding on another CPU may break a near-tie the other way; one
# caption, question or pair decided differently moves a slice mean by at
# most 1/64 (64 images: 64 captions, 384 questions, 256 ITA pairs).
TOLERANCE = 1 / 64


def _result(name: str) -> dict:
  with open(os.path.join(EXPORTS[name], "result.json")) as f:
    return json.load(f)


def test_the_recorded_gate_tables_hold():
  r = _result("base")
  assert r["competent"] and r["failed"] == []
  assert competence.passes(r["metrics"], r["max_objects"])
  r3 = _result("r3_start")
  assert r3["r3_testable"] and not r3["competent"]
  assert competence.r3_testable(r3["metrics"], r3["max_objects"])
  assert r3["failed"] == ["caption fact F1"]
  for name in EXPORTS:
    r = _result(name)
    assert r["step"] == json.load(open(os.path.join(
        EXPORTS[name], "config.json")))["total_steps"]


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_an_export_reproduces_its_recorded_slice_metrics(name):
  """Loading checks params.npz against its fingerprint; each gated metric,
  and the written positions' and traces' accuracy, agrees with the slice
  metrics the export recorded."""
  r = _result(name)
  want = competence.with_derived(r["slice"]["metrics"])
  got = competence.with_derived(competence.evaluate(
      EXPORTS[name], r["slice"]["split"], r["slice"]["max_examples"]))
  keys = [row.key for row in competence.rows(want, r["max_objects"])]
  keys += [k for k in want if k.endswith(("positions/accuracy",
                                          "trace/accuracy"))]
  assert len(keys) >= 12 and all(want.get(k) is not None for k in keys)
  for key in keys:
    assert got[key] == pytest.approx(want[key], abs=TOLERANCE), key
