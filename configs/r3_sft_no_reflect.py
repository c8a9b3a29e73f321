"""R3-SFT ablation: no reflect stage; refine rewrites the draft directly
(<refine> DRAFT <sep> REFINED), stopping when it repeats the draft.

  python -m r3jax.main --config configs/r3_sft_no_reflect.py --workdir runs/r3_nr
"""

from r3jax import config as config_lib

TASKS = ("caption", "vqa", "ita", "refine_direct")


def get_config(arg: str | None = None):
  c = config_lib.world_experiment(arg, TASKS)
  # The same drafts as R3-SFT (configs/r3_sft.py): half the model's own.
  c.r3.update(onpolicy_every=300, onpolicy_frac=0.5)
  return c
