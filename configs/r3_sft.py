"""R3-SFT: captioning + VQA + ITA, plus the reflect and refine stages trained
on verifier-derived targets with the reflect/refine consistency loss.

  python -m r3jax.main --config configs/r3_sft.py --workdir runs/r3_sft
  args: runlocal (CPU smoke run), seed=N, steps=N, method=NAME
"""

from r3jax import config as config_lib

TASKS = ("caption", "vqa", "ita", "reflect", "refine")


def get_config(arg: str | None = None):
  return config_lib.world_experiment(arg, TASKS)
