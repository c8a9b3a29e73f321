"""Bad configs fail early with messages that name the problem."""

import importlib
import os
import subprocess
import sys

import jax
import pytest

from r3jax import config as config_lib
from r3jax import sharding
from r3jax.data import pipeline


EXPECTED_TASKS = {
    "joint": {"caption", "vqa", "ita"}, "caption_only": {"caption"},
    "understanding_only": {"vqa", "ita"},
    "r3_sft": {"caption", "vqa", "ita", "reflect", "refine"},
    "r3_sft_no_consistency": {"caption", "vqa", "ita", "reflect", "refine"},
    "r3_sft_no_reflect": {"caption", "vqa", "ita", "refine_direct"}}


@pytest.mark.parametrize("name", sorted(EXPECTED_TASKS))
@pytest.mark.parametrize("arg", [None, "runlocal", "runlocal,seed=3,steps=7"])
def test_shipped_configs_validate(name, arg):
  c = importlib.import_module(f"configs.{name}").get_config(arg)
  config_lib.validate(c)
  assert set(c.tasks) == EXPECTED_TASKS[name]
  assert (c.r3.consistency == 0) == (name == "r3_sft_no_consistency")
  if arg and "steps=7" in arg:
    assert (c.seed, c.total_steps) == (3, 7)


def test_unknown_key_names_it_and_suggests():
  c = config_lib.defaults()
  with c.unlocked():
    c.optim.learning_rate = 1e-3
  with pytest.raises(ValueError, match=r"unknown config key 'optim.learning_rate'"):
    config_lib.validate(c)
  c = config_lib.defaults()
  with c.unlocked():
    c.optim.weight_decy = 0.1
  with pytest.raises(ValueError, match=r"did you mean 'optim.weight_decay'"):
    config_lib.validate(c)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.tasks.update({"captioning": dict(c.tasks.caption)}),
     "unknown task 'captioning'"),
    (lambda c: c.tasks.caption.update(dict(batch_size=0)), "batch_size must be > 0"),
    (lambda c: c.mesh.update(dict(pipeline=2)), "unknown config key 'mesh.pipeline'"),
    (lambda c: c.mesh.update(dict(data=-1, fsdp=-1)), "at most one mesh axis"),
    (lambda c: c.update(dict(total_steps=0)), "total_steps must be > 0"),
    (lambda c: c.model.update(dict(dtype="float16")), "float32 or bfloat16"),
    (lambda c: c.data.split_sizes.update(dict(dev=3)), "unknown split 'dev'"),
])
def test_bad_values(edit, message):
  c = config_lib.defaults()
  with c.unlocked():
    edit(c)
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c)


def test_parse_arg_errors():
  assert config_lib.parse_arg("runlocal,seed=2", runlocal=False, seed=0).to_dict() == dict(
      runlocal=True, seed=2)
  with pytest.raises(ValueError, match="unknown config argument 'runlcal'"):
    config_lib.parse_arg("runlcal", runlocal=False)
  with pytest.raises(ValueError, match="'seed' needs a value"):
    config_lib.parse_arg("seed", seed=0)


def test_mesh_must_fit_the_devices():
  devices = jax.devices()
  assert len(devices) == 8
  with pytest.raises(ValueError, match=r"needs 4 devices but 8 are available"):
    sharding.make_mesh(dict(data=2, fsdp=2), devices)
  with pytest.raises(ValueError, match=r"does not fit 8 devices"):
    sharding.make_mesh(dict(data=-1, fsdp=3), devices)
  with pytest.raises(ValueError, match=r"unknown mesh axes \['model'\]"):
    sharding.make_mesh(dict(data=-1, model=2), devices)
  mesh = sharding.make_mesh(dict(data=-1, tensor=2), devices)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}


def test_batch_must_divide_over_data_parallel_devices(tiny):
  c = tiny()
  c.tasks.vqa.batch_size = 6
  mesh = sharding.make_mesh(dict(data=4, fsdp=1, tensor=2))
  with pytest.raises(ValueError, match=r"tasks.vqa.batch_size=6 is not divisible"
                                       r" by the data-parallel size data\*fsdp=4"):
    pipeline.TrainData([], None, c.tasks, 0, mesh)


def test_command_line_rejects_unknown_override(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "r3jax.main", "--config=configs/joint.py:runlocal",
       f"--workdir={tmp_path}", "--config.optim.lrr=0.1"],
      capture_output=True, text=True, timeout=120,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.returncode != 0
  assert 'Did you mean "lr" instead of "lrr"?' in out.stderr


def test_method_and_generation_weight_arguments():
  c = importlib.import_module("configs.joint").get_config(
      "runlocal,method=upgrad,gen_weight=0.5")
  config_lib.validate(c)
  assert c.interference.method == "upgrad"
  assert (c.tasks.caption.weight, c.tasks.vqa.weight) == (0.5, 1.0)
  with pytest.raises(ValueError, match="gen_weight=2.0 needs the caption task"):
    importlib.import_module("configs.understanding_only").get_config(
        "gen_weight=2")
  c.interference.method = "pcgard"
  with pytest.raises(ValueError, match="unknown aggregation method 'pcgard'"):
    config_lib.validate(c)
  c.interference.method, c.interference.method_args = "cagrad", {"cc": 0.5}
  with pytest.raises(ValueError, match="has no hyper-parameter 'cc'"):
    config_lib.validate(c)
