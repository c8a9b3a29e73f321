"""The default console of a run: library INFO lines are dropped, r3jax's own
lines, warnings and errors pass (the end-to-end check of a real run's output
is in test_faults.py)."""

import logging
import os

from r3jax import logs


def _record(path, level, msg="m"):
  return logging.LogRecord("x", level, path, 1, msg, None, None)


def test_filter_drops_library_info_and_keeps_the_rest():
  f = logs.LibraryInfoFilter()
  own = os.path.join(os.path.dirname(logs.__file__), "train", "loop.py")
  lib = "/venv/lib/python3.11/site-packages/orbax/checkpoint/manager.py"
  assert f.filter(_record(own, logging.INFO))
  assert not f.filter(_record(lib, logging.INFO))
  assert not f.filter(_record(lib, logging.DEBUG))
  assert f.filter(_record(lib, logging.WARNING))
  assert f.filter(_record(lib, logging.ERROR))
  # A sibling directory whose name starts like the package's is a library.
  assert not f.filter(_record(os.path.dirname(logs.__file__) + "_old/a.py",
                              logging.INFO))
  assert not f.filter(_record(lib, logging.WARNING,
                              "Using custom data configuration: Cfg(...)"))


def test_library_output(monkeypatch, capsys):
  monkeypatch.setattr(logs, "_verbose", True)
  with logs.library_output("building"):
    print("chatter")
  assert capsys.readouterr().out == "chatter\n"
  monkeypatch.setattr(logs, "_verbose", False)
  with logs.library_output("building"):
    print("chatter")
  assert capsys.readouterr().out == "building\n"
  with logs.library_output(None):
    print("chatter")
  assert capsys.readouterr().out == ""
