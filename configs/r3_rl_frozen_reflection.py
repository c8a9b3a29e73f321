"""R3-RL ablation: reflection tokens not trained (only the refined caption).

  python -m r3jax.main --config configs/r3_rl_frozen_reflection.py --workdir runs/r3_rl_frozen_reflection \
      --config.init_from=runs/r3_sft
"""

from configs import r3_rl


def get_config(arg: str | None = None):
  c = r3_rl.get_config(arg)
  c.rl.train_reflection = False
  return c
