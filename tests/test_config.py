"""Bad configs fail early with messages that name the problem."""

import glob
import importlib
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from conftest import flags_config, typed
from r3jax import config as config_lib
from r3jax import sharding
from r3jax.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    (lambda c: c.model.update(dict(max_len=40)),
     r"config.model.max_len=40 is shorter than the longest trained or "
     r"evaluated task \(max_len 44\)"),
    (lambda c: c.update(dict(eval_tasks=["vqa", "captions"])),
     r"config.eval_tasks: unknown tasks \['captions'\]"),
    (lambda c: c.data.split_sizes.update(dict(dev=3)), "unknown split 'dev'"),
    (lambda c: c.model.update(dict(attention="flash")),
     r"config.model: attention must be one of \('auto', 'xla', 'cudnn'\), "
     "got 'flash'"),
    (lambda c: c.model.update(dict(enc_gelu="relu")),
     "config.model: enc_gelu must be 'tanh' or 'erf', got 'relu'"),
    (lambda c: c.data.update(dict(layout="mixed")),
     r"config.data.layout must be one of \('split', 'shared'\), got 'mixed'"),
    (lambda c: c.update(dict(nonfinite="ignore")),
     r"config.nonfinite must be one of \('stop', 'skip'\), got 'ignore'"),
])
def test_bad_values(edit, message):
  c = config_lib.defaults()
  with c.unlocked():
    edit(c)
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c)


def test_cudnn_attention_needs_a_gpu():
  import jax  # noqa: PLC0415
  c = config_lib.defaults()
  c.model.attention = "cudnn"
  if jax.default_backend() == "gpu":
    config_lib.validate(c)
  else:
    with pytest.raises(ValueError, match="attention='cudnn' needs a GPU; this "
                       f"run's backend is '{jax.default_backend()}'"):
      config_lib.validate(c)


def test_eval_tasks_are_scored_beside_the_trained_ones(tmp_path):
  from conftest import tiny_config
  from r3jax.run import loop
  c = tiny_config(("caption",))
  c.eval_tasks = ["caption", "ita"]
  c.total_steps, c.final_eval.max_examples = 1, 4
  c.interference.enabled = False
  assert config_lib.decoder_len(c) == config_lib.all_tasks()["ita"].max_len
  result = loop.train_and_evaluate(c, str(tmp_path), jax.devices()[:1])
  assert "ita/accuracy" in result and "caption/f1" in result
  assert not any(k.startswith("vqa/") for k in result)


def test_parse_arg_errors():
  assert config_lib.parse_arg("runlocal,seed=2", runlocal=False, seed=0).to_dict() == dict(
      runlocal=True, seed=2)
  with pytest.raises(ValueError, match="unknown config argument 'runlcal'"):
    config_lib.parse_arg("runlcal", runlocal=False)
  with pytest.raises(ValueError, match="'seed' needs a value"):
    config_lib.parse_arg("seed", seed=0)



def test_parse_overrides_reads_config_flags_spelling():
  assert config_lib.parse_overrides([
      "--config.total_steps=6", "--config.data.dir=/tmp/a=b",
      "--config.compilation_cache_dir=", "--config.total_steps=7"]) == {
          "total_steps": "7", "data.dir": "/tmp/a=b",
          "compilation_cache_dir": ""}
  assert config_lib.parse_overrides([]) == {}
  for arg in ("--config.total_steps", "--config.=3", "--set=total_steps=6",
              "total_steps=6", "--config=configs/joint.py", "-config.seed=1"):
    with pytest.raises(ValueError) as e:
      config_lib.parse_overrides(["--config.seed=1", arg])
    assert str(e.value) == f"{arg!r}: expected --config.KEY=VALUE"


def test_override_reads_text_as_the_type_it_replaces():
  c = config_lib.defaults()
  texts = {"progress_bar": "False", "interference.enabled": "1",
           "total_steps": "12", "optim.lr": "3e-4", "tasks.caption.weight": "2",
           "data.dir": "/tmp/d", "compilation_cache_dir": "",
           "world.relation_axes": "('horizontal', 'vertical')",
           "world.shapes": '["circle","square"]',
           "model.enc_overrides": '{"width": 64, "depth": 2}',
           "interference.method_args": "{'alpha': 0.5}"}
  for key, text in texts.items():
    config_lib.override(c, key, text, from_text=True)
  got = {k: config_lib.get_value(c, k) for k in texts}
  assert got == {"progress_bar": False, "interference.enabled": True,
                 "total_steps": 12, "optim.lr": 3e-4,
                 "tasks.caption.weight": 2.0, "data.dir": "/tmp/d",
                 "compilation_cache_dir": "",
                 "world.relation_axes": ("horizontal", "vertical"),
                 "world.shapes": ("circle", "square"),
                 "model.enc_overrides": {"width": 64, "depth": 2},
                 "interference.method_args": {"alpha": 0.5}}
  assert isinstance(c.tasks.caption.weight, float)
  # An open dict takes new keys, read as literals; values are set as given.
  config_lib.override(c, "interference.method_args.beta", "2", from_text=True)
  config_lib.override(c, "tasks.vqa.type_weights.relation", 4.0)
  config_lib.override(c, "optim.lr", 1)
  assert c.interference.method_args.to_dict() == {"alpha": 0.5, "beta": 2}
  assert c.tasks.vqa.type_weights.to_dict() == {"relation": 4.0}
  assert c.optim.lr == 1.0 and isinstance(c.optim.lr, float)
  for key, value, message in [
      ("model.nope", "1", "config has no key 'model.nope'"),
      ("nope.depth", "1", "config has no key 'nope' (setting 'nope.depth')"),
      ("total_steps.x", "1", "config has no key 'total_steps.x'"),
      ("total_steps", "abc", "config key 'total_steps': cannot read 'abc'"),
      ("progress_bar", "yes",
       "config key 'progress_bar': cannot read 'yes' (expected a bool"),
      ("interference.method_args.gamma", "abc",
       "config key 'interference.method_args.gamma': cannot read 'abc'")]:
    with pytest.raises(ValueError) as e:
      config_lib.override(c, key, value, from_text=True)
    assert str(e.value).startswith(message), (key, str(e.value))
  with pytest.raises(ValueError, match="config key 'data.dir': Could not "
                     "override field 'dir'"):
    config_lib.override(c, "data.dir", 3)



@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
def test_overrides_read_as_r3jax_main_reads_them(monkeypatch):
  args = ["--config.total_steps=12", "--config.optim.lr=3e-4",
          "--config.tasks.caption.weight=2", "--config.progress_bar=False",
          "--config.interference.enabled=1", "--config.data.dir=/tmp/a b",
          "--config.compilation_cache_dir=", "--config.mesh.data=-1",
          "--config.world.relation_axes=('horizontal', 'vertical')",
          '--config.world.shapes=["circle","square"]',
          '--config.model.enc_overrides={"width":64,"depth":2}',
          "--config.interference.method_args={'alpha': 0.5}"]
  spec = "configs/joint.py:runlocal,seed=3"
  monkeypatch.chdir(ROOT)
  expected = flags_config(["r3jax.main", f"--config={spec}", *args])
  c = config_lib.from_file(spec, ROOT)
  for key, text in config_lib.parse_overrides(args).items():
    config_lib.override(c, key, text, from_text=True)
  assert typed(c.to_dict()) == typed(expected.to_dict())
  assert c.total_steps == 12 and c.world.relation_axes[1] == "vertical"


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


SHIPPED = sorted(
    os.path.basename(p)[:-3] for p in glob.glob(os.path.join(
        os.path.dirname(__file__), "..", "configs", "*.py"))
    if not p.endswith("__init__.py"))


def test_every_config_file_is_shipped():
  assert len(SHIPPED) >= 11 and set(EXPECTED_TASKS) <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_validates_and_fits(name, tmp_path):
  real = name.startswith("coco")  # they need the official files' folder
  for arg in (None, "runlocal"):
    if real:
      arg = ",".join(filter(None, [arg, f"manual_dir={tmp_path}"]))
    c = importlib.import_module(f"configs.{name}").get_config(arg)
    config_lib.validate(c)
    assert (c.data.source == "coco_vqa") == real
    for devices in (1, 8):
      shape = config_lib.check_devices(c, devices)
      assert shape["data"] * shape["fsdp"] * shape["tensor"] == devices


def _from_dict(edit):
  """A config built from plain values, as a saved config.json would be:
  ConfigDict's own assignment checks never saw them."""
  d = config_lib.defaults().to_dict()
  edit(d)
  return ml_collections.ConfigDict(d)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(total_steps="100"),
     r"config.total_steps must be an int, got str '100'"),
    (lambda d: d.update(total_steps=100.0),
     r"config.total_steps must be an int, got float 100.0"),
    (lambda d: d.update(seed=True), r"config.seed must be an int, got bool"),
    (lambda d: d.update(progress_bar=[1]),
     r"config.progress_bar must be a bool, got list \[1\]"),
    (lambda d: d["optim"].update(lr="2e-3"),
     r"config.optim.lr must be a float \(or int\), got str"),
    (lambda d: d["world"].update(shapes=("circle", 3)),
     r"config.world.shapes\[1\] must be a str, got int 3"),
    (lambda d: d["world"].update(shapes="circle"),
     r"config.world.shapes must be a list or tuple, got str"),
    (lambda d: d["tasks"]["vqa"].update(batch_size=8.0),
     r"config.tasks.vqa.batch_size must be an int, got float 8.0"),
    (lambda d: d["data"]["split_sizes"].update(train="64"),
     r"config.data.split_sizes.train must be an int, got str"),
    (lambda d: d["model"].update(enc_overrides=dict(widht=64)),
     r"unknown key 'widht' in config.model.enc_overrides; known: "
     r"\['width', 'depth', 'heads', 'mlp'\]"),
    (lambda d: d["model"].update(enc_overrides=dict(width="64")),
     r"config.model.enc_overrides.width must be an int"),
    (lambda d: d["mesh"].update(data=None),
     r"config.mesh.data must be an int, got NoneType None"),
    (lambda d: d.update(world="big"), r"config.world must be a dict, got str"),
    (lambda d: d.update(total_steps=dict(train=3)),
     r"config.total_steps is one setting \(an int\), not a dict \(got "
     r"config.total_steps.train\)"),
])
def test_wrong_types_name_the_key_and_both_types(edit, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate(_from_dict(edit))


def test_compatible_types_are_accepted():
  def edit(d):
    d["optim"]["lr"] = 1  # an int where a float is expected
    d["world"]["shapes"] = ["circle", "square"]  # a list for a tuple
    d["sharding_rules"] = [list(r) for r in d["sharding_rules"]]
    d["interference"]["thresholds"] = (0, -0.5)
    d["total_steps"] = np.int64(10)
  config_lib.validate(_from_dict(edit))
  # A run's config.json, read back, validates as the config it was.
  c = importlib.import_module("configs.r3_sft").get_config("runlocal")
  config_lib.validate(ml_collections.ConfigDict(
      json.loads(json.dumps(c.to_dict()))))


def test_a_saved_config_loads_over_todays_defaults(tmp_path):
  """An older run's config.json: a key added since takes its default, an old
  spelling of a value is translated, the run's own values are kept."""
  c = importlib.import_module("configs.r3_sft").get_config("runlocal,seed=4")
  d = json.loads(json.dumps(c.to_dict()))
  del d["nonfinite"]
  for t in d["tasks"].values():
    del t["per_image"]
  d["model"]["remat"] = True
  path = tmp_path / "config.json"
  path.write_text(json.dumps(d))
  loaded = config_lib.load_saved(str(path))
  assert loaded.nonfinite == "stop" and loaded.model.remat == "full"
  assert loaded.seed == 4 and set(loaded.tasks) == set(c.tasks)
  assert loaded.to_dict() == {**c.to_dict(), "model": {
      **c.model.to_dict(), "remat": "full"}}


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.model.update(dict(encoder="XL")),
     r"config.model.encoder='XL' is not a named size; known: "
     r"\['mu', 'Ti', 'S', 'B', 'L'\]"),
    (lambda c: c.model.update(dict(stem="conv2")), r"'patch' or 'conv'"),
    (lambda c: c.model.update(dict(stem_convs=1)),
     r"config.model.stem_convs=1 needs stem='conv'"),
    (lambda c: c.model.update(dict(pos_init="rope")),
     r"config.model.pos_init must be 'normal' or 'sincos2d'"),
    (lambda c: c.model.update(dict(cross_pos="yx")),
     r"config.model.cross_pos must be 'none' or 'xy'"),
    (lambda c: c.update(dict(init_from_partial=True)),
     r"config.init_from_partial is set without config.init_from"),
    (lambda c: c.r3.update(dict(variant="reflect_twice")),
     r"unknown R3 variant 'reflect_twice'"),
    (lambda c: c.r3.update(dict(variant="direct")),
     r"config.r3.variant='direct' needs the tasks \['refine_direct'\]"),
    (lambda c: config_lib.select_tasks(c, ("caption", "reflect",
                                           "refine_direct")),
     r"reflect and refine_direct \(without refine\) imply no built-in "
     r"variant: name one in config.r3.variant"),
    (lambda c: c.model.update(dict(patch_size=7)),
     r"config.world.image_size=64 is not divisible by "
     r"config.model.patch_size=7"),
    (lambda c: c.model.update(dict(dec_heads=3)),
     r"dec width 128 is not divisible by its 3 heads"),
    (lambda c: c.model.enc_overrides.update(dict(depth=0)),
     r"enc sizes must be > 0, got \{'depth': 0\}"),
    (lambda c: c.mesh.update(dict(fsdp=0)),
     r"config.mesh.fsdp=0: mesh sizes are positive or -1"),
    (lambda c: c.evals.update(dict(split="dev")),
     r"config.evals.split='dev' is not in config.data.split_sizes"),
    (lambda c: c.final_eval.update(dict(batch_size=0)),
     r"config.final_eval needs batch_size > 0"),
    (lambda c: c.data.split_sizes.update(dict(test=0)),
     r"config.data.split_sizes.test must be > 0"),
    (lambda c: c.data.update(dict(layout="shared")),
     r"layout='shared' needs equal task batch sizes"),
    (lambda c: c.tasks.vqa.update(dict(per_image=3)),
     r"config.tasks.vqa.per_image=3 must be >= 1 and divide batch_size=32"),
    (lambda c: (c.tasks.ita.update(dict(batch_size=32, per_image=2)),
                c.data.update(dict(layout="shared"))),
     r"per_image=2: several examples per image .* 'split' layout only"),
])
def test_bad_model_data_and_mesh_values(edit, message):
  c = config_lib.defaults()
  with c.unlocked():
    edit(c)
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c)


def test_per_image_needs_whole_images_on_every_data_shard(tiny):
  c = tiny()
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.tasks.vqa.per_image = 2  # 8 questions, 4 images: 8 devices cannot split
  with pytest.raises(ValueError, match=(
      r"config.tasks.vqa.batch_size/per_image=4 is not divisible by the "
      r"data-parallel size data\*fsdp=8")):
    config_lib.check_devices(c, 8)
  assert config_lib.check_devices(c, 4)["data"] == 4


def test_mesh_and_batches_must_fit_the_devices(tiny):
  c = tiny()
  c.mesh = dict(data=2, fsdp=2, tensor=1)
  with pytest.raises(ValueError, match=(
      r"config.mesh=\{'data': 2, 'fsdp': 2, 'tensor': 1\} needs 4 devices but "
      r"8 are available; set config.mesh.data=-1 \(here 4\)")):
    config_lib.check_devices(c, 8)
  c.mesh = dict(data=-1, fsdp=3, tensor=1)
  with pytest.raises(ValueError, match=(
      r"needs a multiple of 3 devices but 8 are available; choose sizes whose "
      r"product is 8")):
    config_lib.check_devices(c, 8)
  c.mesh = dict(data=-1, fsdp=1, tensor=2)
  assert config_lib.check_devices(c, 8) == dict(data=4, fsdp=1, tensor=2)
  c.tasks.vqa.batch_size = 6
  with pytest.raises(ValueError, match=(
      r"config.tasks.vqa.batch_size=6 is not divisible by the data-parallel "
      r"size data\*fsdp=4 .*; use a multiple of 4")):
    config_lib.check_devices(c, 8)
  c.tasks.vqa.batch_size = 8
  assert config_lib.check_devices(c, 8, num_processes=2)["data"] == 4
  c.mesh = dict(data=1, fsdp=1, tensor=-1)
  with pytest.raises(ValueError, match=(
      r"config.tasks.caption.batch_size=8 .* and the 16 processes; use a "
      r"multiple of 16")):
    config_lib.check_devices(c, 16, num_processes=16)
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.evals.batch_size = 12
  with pytest.raises(ValueError, match=r"config.evals.batch_size=12 is not "
                                       r"divisible .* data\*fsdp=8"):
    config_lib.check_devices(c, 8)
  c.evals.batch_size = 8
  c.final_eval.batch_size = 4
  with pytest.raises(ValueError, match=r"config.final_eval.batch_size=4"):
    config_lib.check_devices(c, 8)
  c = importlib.import_module("configs.r3_rl").get_config("runlocal")
  c.rl.group_size = 3  # 2 groups of 3 rollouts
  with pytest.raises(ValueError, match=r"config.rl.groups\*group_size=6"):
    config_lib.check_devices(c, 8)


def test_build_rejects_a_misfit_before_building_anything(tiny, monkeypatch):
  from r3jax.run import loop

  def unreachable(*args, **kwargs):
    raise AssertionError("build went past its checks")

  monkeypatch.setattr(loop.world_setup, "load", unreachable)
  monkeypatch.setattr(loop.sharding, "make_mesh", unreachable)
  c = tiny(data=2)
  with pytest.raises(ValueError, match=r"needs 2 devices but 8 are available; "
                                       r"set config.mesh.data=-1 \(here 8\)"):
    loop.build(c, jax.devices())
  c = tiny(data=-1)
  c.tasks.caption.batch_size = 4
  with pytest.raises(ValueError, match=r"config.tasks.caption.batch_size=4 is "
                                       r"not divisible .* data\*fsdp=8"):
    loop.build(c, jax.devices())
  c = tiny()
  c.model.encoder = "XL"
  with pytest.raises(ValueError, match=r"config.model.encoder='XL'"):
    loop.build(c, jax.devices())


def test_base_argument_takes_the_bases_world_and_model(tmp_path):
  """configs/<any>.py:base=DIR starts from DIR's parameters with DIR's world
  and model settings; the run's own tasks and schedule stay."""
  base = config_lib.defaults()
  base.model.update(dict(stem="conv", pos_init="sincos2d", dec_depth=3,
                         max_len=144))
  base.world.image_size = 48
  config_lib.dump(base, str(tmp_path / "config.json"))
  c = config_lib.from_file(f"configs/r3_sft.py:base={tmp_path},steps=7",
                           ROOT)
  config_lib.validate(c)
  assert c.init_from == str(tmp_path) and c.total_steps == 7
  assert c.model.to_dict() == base.model.to_dict()
  assert c.world.image_size == 48 and "reflect" in c.tasks
  # The formats the base writes its answers and captions in come with it.
  base.data.update(dict(relation_answers="trace", caption_positions=True,
                        caption_trace=True))
  base.tasks.caption.max_len = 56  # room for the written positions
  config_lib.dump(base, str(tmp_path / "config.json"))
  c = config_lib.from_file(f"configs/joint.py:base={tmp_path}", ROOT)
  config_lib.validate(c)
  assert (c.data.relation_answers, c.data.caption_positions,
          c.data.caption_trace) == ("trace", True, True)
  assert c.tasks.caption.max_len == 56
  assert c.tasks.vqa.max_len == config_lib.all_tasks()["vqa"].max_len
  assert c.data.position_questions == 0.0  # a training mix, not a format
  with pytest.raises(ValueError, match="base=... and runlocal exclude"):
    config_lib.from_file(f"configs/joint.py:base={tmp_path},runlocal", ROOT)
  with pytest.raises(ValueError, match="has no config.json"):
    config_lib.from_file(f"configs/joint.py:base={tmp_path / 'no'}", ROOT)


@pytest.mark.parametrize("name", ["coco_vqa_joint", "coco_caption_only",
                                  "coco_vqa_understanding_only",
                                  "coco_r3_sft"])
def test_real_data_configs_train_vit_b16(name):
  """The real-data recipe's encoder is ViT-B/16 itself: none of the joint
  recipe's narrow-encoder overrides survive."""
  c = importlib.import_module(f"configs.{name}").get_config()
  cfg = config_lib.model_config(c, 1000, c.world.image_size)
  assert (cfg.enc_width, cfg.enc_depth, cfg.enc_heads, cfg.enc_mlp) == (
      768, 12, 12, 3072)
  assert (cfg.patch_size, c.world.image_size, c.model.dec_depth) == (16, 224, 6)


@pytest.mark.parametrize("name", [os.path.basename(p)[:-3] for p in sorted(
    glob.glob(os.path.join(ROOT, "configs", "*.py")))
    if not os.path.basename(p).startswith(("_", "coco"))])
def test_every_world_config_starts_from_a_base(name):
  """Every world config file takes base=DIR (its docstring says so): the
  base's model settings and parameters."""
  base = os.path.join(ROOT, "experiments", "competence", "runs",
                      "mix_sincos_rf")
  c = importlib.import_module(f"configs.{name}").get_config(f"base={base}")
  assert c.init_from == base and c.model.stem_convs == 2
