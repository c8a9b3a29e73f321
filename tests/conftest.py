"""Tests run on 8 fake CPU devices with a persistent compilation cache."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

_CACHE = os.path.join(os.path.dirname(__file__), "..", ".cache", "jax-tests")
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import pytest  # noqa: E402

from r3jax import config as config_lib  # noqa: E402

# One tiny world for every training test, built once per session.
_DATA_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..",
                                         ".cache", "test-data"))


def tiny_config(tasks=("caption", "vqa", "ita"), **mesh):
  c = config_lib.defaults()
  config_lib.select_tasks(c, tasks)
  config_lib.runlocal(c)
  c.data.dir = _DATA_DIR
  c.progress_bar = False
  c.compilation_cache_dir = ""
  c.mesh = {"data": 1, "fsdp": 1, "tensor": 1, **mesh}
  return c


@pytest.fixture
def tiny():
  return tiny_config
