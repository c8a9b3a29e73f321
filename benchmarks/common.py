"""What every benchmark script shares: the hardware line and name=value output.

Each script prints `name=value` lines (several may share a line) and, given
`--json PATH`, writes the same figures there as one JSON object; nothing is
written without it (benchmarks/run_all.py collects everything instead).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable


def hardware() -> dict[str, object]:
  import jax  # noqa: PLC0415 (scripts set XLA_FLAGS before jax loads)
  dev = jax.devices()[0]
  return {"platform": dev.platform,
          "device_kind": getattr(dev, "device_kind", "?"),
          "device_count": jax.device_count(), "host_cpus": os.cpu_count(),
          "processor": platform.processor() or platform.machine()}


def hardware_line(hw: dict[str, object]) -> str:
  return (f"hardware={hw['platform']}:{hw['device_kind']} x{hw['device_count']} "
          f"host_cpus={hw['host_cpus']} ({hw['processor']})")


class Report:
  """Prints figures as name=value and keeps them for --json."""

  def __init__(self):
    self.figures: dict[str, object] = {}

  def put(self, **figures: object) -> None:
    self.figures.update(figures)
    print(" ".join(f"{k}={_fmt(v)}" for k, v in figures.items()), flush=True)

  def hardware(self) -> None:
    hw = hardware()
    self.figures["hardware"] = hw
    print(hardware_line(hw), flush=True)

  def write(self, path: str | None) -> None:
    if path:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      with open(path, "w") as f:
        json.dump(self.figures, f, indent=1, sort_keys=True)


def _fmt(v: object) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v).replace(" ", "_")


def interleaved(fns: dict[str, Callable[[], object]], rounds: int,
                repeats: int) -> dict[str, float]:
  """Median seconds of each fn (already warmed up), timed in interleaved rounds
  so that drift in machine speed hits every variant alike."""
  times = {k: [] for k in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - t0)
  return {k: statistics.median(v) for k, v in times.items()}


# Model sizes the scripts share: changes to configs/joint.py's model.
# "default" is the joint config as it is (a narrow 2+2-layer model, 64 px).
SIZES: dict[str, dict[str, object]] = {
    "default": {},
    # A few layers of width 64: a CPU smoke size.
    "tiny": dict(encoder="mu", patch_size=8, enc_overrides=dict(
        width=64, depth=2, heads=2, mlp=256), dec_width=64, dec_depth=2,
                 dec_heads=2, dec_mlp=256),
    # ViT-S/16 at 224 px + 6 x 384 decoder.
    "S": dict(encoder="S", patch_size=16, enc_overrides={}, dec_width=384,
              dec_depth=6, dec_heads=6, dec_mlp=1536, image_size=224),
    # ViT-B/16 at 224 px + 6 x 768 decoder.
    "B": dict(encoder="B", patch_size=16, enc_overrides={}, dec_width=768,
              dec_depth=6, dec_heads=12, dec_mlp=3072, image_size=224),
}


def bench_config(size: str = "default", batch: int | None = None,
                 dtype: str = "float32", max_len: int = 0, tasks: str = ""):
  """configs/joint.py's config at a SIZES entry; `batch` sets every task's
  batch size, `max_len` the decoder positions (0: the config's), `tasks`
  (comma-separated) keeps only those tasks."""
  from configs import joint  # noqa: PLC0415
  from r3jax import config as config_lib  # noqa: PLC0415
  c = joint.get_config()
  if tasks:
    config_lib.select_tasks(c, tasks.split(","))
  change = dict(SIZES[size])
  image_size = change.pop("image_size", None)
  if image_size:
    c.world.image_size = image_size
  for k, v in change.items():
    c.model[k] = v
  c.model.dtype = dtype
  c.model.max_len = max_len
  c.interference.enabled = False  # the plain step
  c.compilation_cache_dir = ""
  for t in c.tasks.values():
    if batch:
      t.batch_size = batch
  return c


def model_config(c):
  """The r3jax ModelConfig of config `c`, the vocabulary the world's."""
  from r3jax.data.tokenizer import WordTokenizer  # noqa: PLC0415
  from r3jax import config as config_lib  # noqa: PLC0415
  from r3jax.run import world_setup  # noqa: PLC0415
  wcfg = world_setup.world_config(c)
  vocab = WordTokenizer.from_world(wcfg).vocab_size
  return config_lib.model_config(c, vocab, wcfg.image_size)


def random_batch(c, vocab: int, seed: int = 0, shared: bool = False
                 ) -> dict[str, dict]:
  """A batch of random images and tokens, the loss on the second half of
  every sequence (like a prompt + target); split layout, or with `shared`
  the same images for every task."""
  import numpy as np  # noqa: PLC0415
  rng = np.random.default_rng(seed)
  size, out, images = c.world.image_size, {}, None
  for name, t in sorted(c.tasks.items()):
    if images is None or not shared:
      images = rng.integers(0, 256, (t.batch_size, size, size, 3), np.uint8)
    tokens = rng.integers(4, vocab, (t.batch_size, t.max_len), np.int32)
    mask = np.zeros((t.batch_size, t.max_len), np.float32)
    mask[:, t.max_len // 2:] = 1
    out[name] = {"image": images, "tokens": tokens,
                 "targets": np.roll(tokens, -1, 1), "loss_mask": mask}
  return out


def train_step(c, mcfg, devices=None):
  """(mesh, setup, init_state, update) of r3jax's plain jitted train step
  (r3jax.run.loop's, interference off) for ModelConfig `mcfg`."""
  from r3jax import sharding  # noqa: PLC0415
  from r3jax.model import Model  # noqa: PLC0415
  from r3jax.run import loop  # noqa: PLC0415
  make_model = lambda rngs: Model(mcfg, rngs=rngs)  # noqa: E731
  mesh = sharding.make_mesh(c.mesh, devices)
  setup, init = loop.make_setup(c, mesh, make_model, None)
  return mesh, setup, init, loop.make_update(c, setup, make_model, None)
