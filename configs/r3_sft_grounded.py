"""R3-SFT with the grounded consistency loss (r3jax/r3/grounded.py): beside
R3-SFT's tasks, the ground task asks the VQA questions of up to 6 facts a
caption states (for half the examples, from the first draft refresh on, the
model's own draft, or, for a quarter of those whose round edits, its refined
caption in the refine format; otherwise a reference caption, corrupted or
not) and teaches the caption's words the VQA answers by KL, leaving out
slots whose teacher gives less than 0.5 to every answer a caption can state.
The reflect/refine consistency loss stays (configs/r3_sft_no_consistency.py
is the run without it).

  python -m r3jax.main --config configs/r3_sft_grounded.py --workdir runs/r3_g
  args: as configs/r3_sft.py
"""

from configs import r3_sft


def get_config(arg: str | None = None):
  c = r3_sft.get_config(arg, extra_tasks=("ground",))
  # A refined caption comes in the refine format: the refine task's length.
  c.tasks.ground.max_len = max(c.tasks.ground.max_len, c.tasks.refine.max_len)
  c.r3.update(ground_refined=0.25, ground_min_conf=0.5)
  return c
