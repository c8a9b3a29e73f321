"""The on-policy draft store: which examples, which window, waiting, reload."""

import threading

import pytest

from r3jax.r3.drafts import DraftStore


def _store(tmp_path, **kw):
  return DraftStore(str(tmp_path), every=10, frac=0.5, margin=3,
                    batch_sizes={"reflect": 4, "refine": 2}, seed=0, **kw)


def test_windows_and_selection_follow_the_stream_position(tmp_path):
  s = _store(tmp_path)
  # Steps 1..13 (margin 3 + one period) come before the first window.
  assert s.window("reflect", 13 * 4 - 1) == 0
  assert s.window("reflect", 13 * 4) == 1 and s.window("refine", 13 * 2) == 1
  assert s.window("reflect", 23 * 4) == 2
  assert not any(s.selected("reflect", j) for j in range(13 * 4))
  wanted = s.wanted(1)
  assert set(wanted["reflect"]) <= set(range(13 * 4, 23 * 4))
  assert set(wanted["refine"]) <= set(range(13 * 2, 23 * 2))
  assert wanted["reflect"] == [j for j in range(13 * 4, 23 * 4)
                               if s.selected("reflect", j)]
  assert 0.25 < len(wanted["reflect"]) / 40 < 0.75
  assert _store(tmp_path).wanted(1) == wanted  # fixed by position and seed


def test_get_waits_for_the_window_and_a_new_store_reads_it_back(tmp_path):
  s = _store(tmp_path)
  j = s.wanted(1)["reflect"][0]
  got = []
  t = threading.Thread(target=lambda: got.append(s.get("reflect", j)))
  t.start()
  s.put(1, {"reflect": {j: "there is a small red circle"}, "refine": {}})
  t.join(timeout=10)
  assert got == ["there is a small red circle"] and s.has(1)
  assert _store(tmp_path).get("reflect", j) == "there is a small red circle"


def test_a_window_never_written_fails_with_a_clear_error(tmp_path):
  s = _store(tmp_path, timeout_s=0.2)
  j = s.wanted(2)["refine"][0]
  with pytest.raises(TimeoutError, match="window 2"):
    s.get("refine", j)
