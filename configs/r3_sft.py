"""R3-SFT: captioning + VQA + ITA, plus the reflect and refine stages trained
on verifier-derived targets (drafts: corrupted references and the model's own
captions) with the reflect/refine consistency loss.

  python -m r3jax.main --config configs/r3_sft.py --workdir runs/r3_sft
  args: runlocal (CPU smoke run), seed=N, steps=N, method=NAME
        base=DIR (start from that run or exported base, e.g.
        experiments/competence/base, with its world and model settings)
"""

from r3jax import config as config_lib

TASKS = ("caption", "vqa", "ita", "reflect", "refine")


def get_config(arg: str | None = None, extra_tasks: tuple[str, ...] = ()):
  c = config_lib.world_experiment(arg, TASKS + tuple(extra_tasks))
  # Half the reflect / refine drafts are the model's own captions, refreshed
  # every 300 steps (r3jax/r3/drafts.py); the rest are corrupted references.
  # refine's own drafts come with the model's own reflection on them.
  c.r3.update(onpolicy_every=300, onpolicy_frac=0.5,
              onpolicy_reflections=True)
  return c
