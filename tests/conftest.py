"""Tests run on 8 fake CPU devices with a persistent compilation cache."""

import functools
import importlib.util
import os
import sys
from collections.abc import Mapping
from typing import Any

# The models here are tiny: compiling them costs far more than running them.
# Without LLVM's optimisation passes, with the classic elemental emitters
# instead of XLA:CPU's MLIR fusion emitters and in one codegen module, the
# tiny training step compiles in about a third of XLA's default time
# (benchmarks/compile_flags.py has each flag's share). Subprocesses inherit
# these flags (test_multihost adds its own device count to them;
# test_optim's comparison with optax removes them).
FAST_COMPILE = ("--xla_backend_optimization_level=0 "
                "--xla_cpu_use_fusion_emitters=false "
                "--xla_cpu_parallel_codegen_split_count=1")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE
                           + " --xla_force_host_platform_device_count=8")
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
  # The plain step: the instrumented one compiles every task's backward pass
  # (2-3x the compile time); the tests of it turn it on.
  c.interference.enabled = False
  # Evaluations score the loop only: refine on the verifier's edit is one
  # more decode to compile (tests/test_r3_loop.py tests it).
  c.r3.given_edit = False
  c.compilation_cache_dir = ""
  c.mesh = {"data": 1, "fsdp": 1, "tensor": 1, **mesh}
  return c


@pytest.fixture
def tiny():
  return tiny_config


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_command(c, workdir: str, *extra: str) -> list[str]:
  """`python -m r3jax.main` on configs/joint.py:runlocal with the overrides
  that make it the tiny config `c` (of the joint tasks); run it from ROOT."""
  keys = ["total_steps", "keep_ckpts", "ckpt_every_steps", "eval_every_steps",
          "final_eval.max_examples", "interference.enabled",
          *(f"mesh.{k}" for k in c.mesh)]
  value = lambda key: c[key] if "." not in key else c[key.split(".")[0]][
      key.split(".")[1]]
  return [sys.executable, "-m", "r3jax.main",
          "--config=configs/joint.py:runlocal", f"--workdir={workdir}",
          f"--config.data.dir={c.data.dir}", "--config.progress_bar=False",
          f"--config.compilation_cache_dir={os.path.abspath(_CACHE)}",
          *(f"--config.{k}={value(k)}" for k in keys), *extra]


def flags_config(argv: list[str]):
  """The config that `python -m r3jax.main` builds from `argv` (its
  ml_collections config_flags: the --config file and its --config.KEY
  overrides; other flags are left alone), without running anything."""
  from absl import flags  # noqa: PLC0415
  from ml_collections import config_flags  # noqa: PLC0415
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                  lock_config=True, sys_argv=argv)
  values(argv, known_only=True)
  return values.config


def typed(d: Mapping, prefix: str = "") -> dict[str, tuple[str, Any]]:
  """A nested dict flattened to {dotted key: (type name, value)}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(typed(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = (type(v).__name__, v)
  return out


def committed_steps(workdir: str) -> list[int]:
  """Steps of the complete checkpoints in a run's workdir."""
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if (
      os.path.isdir(d)) else []


@functools.cache
def aot_script():
  """scripts/aot_compile.py as a module (it is a script, not in the
  package)."""
  spec = importlib.util.spec_from_file_location(
      "aot_compile", os.path.join(ROOT, "scripts", "aot_compile.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # its dataclass looks itself up there
  spec.loader.exec_module(module)
  return module
