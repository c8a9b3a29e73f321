"""What a run prints: by default the progress bar, the evaluation lines and
tables, and every warning and error; library INFO lines (orbax's checkpoint
bookkeeping, TFDS's dataset generation) only with `--verbosity=0` (or -v 0).

`quiet()` filters on the absl handler that `app.run` installs on the root
logger, so it covers absl and Python loggers alike; r3jax's own INFO lines
pass.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator

from absl import logging as absl_logging

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
# Warnings that say nothing to a user: TFDS names every world configuration
# "custom" because the world's settings are not a predefined builder config.
BENIGN = ("Using custom data configuration",)
_verbose = True


class LibraryInfoFilter(logging.Filter):
  """Keeps warnings and errors (less BENIGN) and r3jax's own INFO lines."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return not str(record.msg).startswith(BENIGN)
    return record.pathname.startswith(_PACKAGE)


_FILTER = LibraryInfoFilter()


def quiet() -> None:
  """The default console of a run (see the module doc)."""
  global _verbose
  _verbose = False
  absl_logging.get_absl_handler().addFilter(_FILTER)


def verbose() -> bool:
  return _verbose


@contextlib.contextmanager
def library_output(what: str | None) -> Iterator[None]:
  """Runs a chatty library call (TFDS's dataset generation with its progress
  bars and prints): verbatim when verbose, else silenced, with one line
  saying `what` (if not None)."""
  if _verbose:
    yield
    return
  import tensorflow_datasets as tfds
  if what:
    print(what, flush=True)
  tfds.disable_progress_bar()
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds.enable_progress_bar()
