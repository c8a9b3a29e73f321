"""Generation only: captioning on the embedded world.

  python -m r3jax.main --config configs/caption_only.py --workdir runs/caption_only
  python -m r3jax.main --config configs/caption_only.py:runlocal --workdir /tmp/caption_only
  args: runlocal (CPU smoke run), seed=N, steps=N
"""

from r3jax import config as config_lib

TASKS = ("caption",)


def get_config(arg: str | None = None):
  arg = config_lib.parse_arg(arg, runlocal=False, seed=0, steps=0)
  c = config_lib.defaults()
  config_lib.select_tasks(c, TASKS)
  c.seed = arg.seed
  if arg.runlocal:
    config_lib.runlocal(c)
  if arg.steps:
    c.total_steps = arg.steps
  return c
