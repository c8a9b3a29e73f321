"""Joint training on real data: COCO captioning + VQAv2 + COCO image-text
alignment, ViT-B/16 at 224 px with a 6-layer decoder (docs/real-data.md).

  python -m r3jax.main --config configs/coco_vqa_joint.py:manual_dir=/data/coco \
      --workdir runs/coco_joint [--config.model.encoder_init=vit_b16.npz]
  args: manual_dir=PATH (or $R3JAX_COCO_DIR), karpathy, runlocal, seed=N,
  steps=N, method=NAME, gen_weight=R
"""

from r3jax import config as config_lib

TASKS = ("caption", "vqa", "ita")


def get_config(arg: str | None = None):
  return config_lib.coco_vqa_experiment(arg, TASKS)
