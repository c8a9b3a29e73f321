"""R3-SFT ablation: the consistency loss off (config.r3.consistency = 0).

  python -m r3jax.main --config configs/r3_sft_no_consistency.py --workdir runs/r3_nc
"""

from configs import r3_sft


def get_config(arg: str | None = None):
  c = r3_sft.get_config(arg)
  c.r3.consistency = 0.0
  return c
