"""Generation only: captioning on the embedded world.

  python -m r3jax.main --config configs/caption_only.py --workdir runs/caption_only
  python -m r3jax.main --config configs/caption_only.py:runlocal --workdir /tmp/caption_only
  args: runlocal (CPU smoke run), seed=N, steps=N
        base=DIR (start from that run or exported base, e.g.
        experiments/competence/base, with its world and model settings)
"""

from r3jax import config as config_lib

TASKS = ("caption",)


def get_config(arg: str | None = None):
  c = config_lib.world_experiment(arg, TASKS)
  c.eval_tasks = ["caption", "vqa", "ita"]  # what it costs the other tasks
  return c
