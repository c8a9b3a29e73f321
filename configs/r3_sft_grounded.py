"""R3-SFT with the grounded consistency loss (r3jax/r3/grounded.py): beside
R3-SFT's tasks, the ground task asks the VQA question of every fact the
model's own caption states (its on-policy draft, or for a quarter of them
its refined caption in the refine format) and teaches the caption's word the
VQA answer by KL. The reflect/refine consistency loss stays
(configs/r3_sft_no_consistency.py is the run without it).

  python -m r3jax.main --config configs/r3_sft_grounded.py --workdir runs/r3_g
  args: as configs/r3_sft.py
"""

from configs import r3_sft


def get_config(arg: str | None = None):
  c = r3_sft.get_config(arg, extra_tasks=("ground",))
  # A refined caption comes in the refine format: the refine task's length.
  c.tasks.ground.max_len = max(c.tasks.ground.max_len, c.tasks.refine.max_len)
  c.r3.ground_refined = 0.25
  return c
