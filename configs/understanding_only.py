"""Understanding only: VQA + image-text alignment on the embedded world.

  python -m r3jax.main --config configs/understanding_only.py --workdir runs/understanding_only
  python -m r3jax.main --config configs/understanding_only.py:runlocal --workdir /tmp/understanding_only
  args: runlocal (CPU smoke run), seed=N, steps=N
        base=DIR (start from that run or exported base, e.g.
        experiments/competence/base, with its world and model settings)
"""

from r3jax import config as config_lib

TASKS = ("vqa", "ita")


def get_config(arg: str | None = None):
  c = config_lib.world_experiment(arg, TASKS)
  c.eval_tasks = ["caption", "vqa", "ita"]  # what it costs the other tasks
  return c
