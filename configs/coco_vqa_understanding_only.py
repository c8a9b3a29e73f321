"""Understanding only on real data: VQAv2 + COCO image-text alignment,
scored on every task (see configs/coco_vqa_joint.py for the arguments)."""

from r3jax import config as config_lib

TASKS = ("vqa", "ita")


def get_config(arg: str | None = None):
  c = config_lib.coco_vqa_experiment(arg, TASKS)
  c.eval_tasks = ["caption", "vqa", "ita"]  # what it costs the other tasks
  return c
