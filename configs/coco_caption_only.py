"""Generation only on real data: COCO captioning, scored on every task
(see configs/coco_vqa_joint.py for the arguments)."""

from r3jax import config as config_lib

TASKS = ("caption",)


def get_config(arg: str | None = None):
  c = config_lib.coco_vqa_experiment(arg, TASKS)
  c.eval_tasks = ["caption", "vqa", "ita"]  # what it costs the other tasks
  return c
