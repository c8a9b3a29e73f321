"""R3-SFT on real data: COCO captioning + VQAv2 + ITA, plus the reflect and
refine stages trained on targets from the nearest human caption
(r3jax/r3/real.py; drafts: the model's own captions and corrupted
references), with the reflect/refine consistency loss on replaced words.
See configs/coco_vqa_joint.py for the arguments.
"""

from r3jax import config as config_lib

TASKS = ("caption", "vqa", "ita", "reflect", "refine")


def get_config(arg: str | None = None):
  c = config_lib.coco_vqa_experiment(arg, TASKS)
  # Half the reflect / refine drafts are the model's own captions, refreshed
  # every 1000 steps; the rest are corrupted references.
  c.r3.update(onpolicy_every=1000, onpolicy_frac=0.5)
  return c
