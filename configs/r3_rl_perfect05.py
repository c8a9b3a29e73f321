"""R3-RL ablation: perfect_ratio 0.5.

  python -m r3jax.main --config configs/r3_rl_perfect05.py --workdir runs/r3_rl_perfect05 \
      --config.init_from=runs/r3_sft
"""

from configs import r3_rl


def get_config(arg: str | None = None):
  c = r3_rl.get_config(arg)
  c.rl.perfect_ratio = 0.5
  return c
