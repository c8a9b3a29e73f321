"""R3-RL ablation: chain RL (one outcome reward for the whole draft -> reflect -> refine trajectory).

  python -m r3jax.main --config configs/r3_rl_chain.py --workdir runs/r3_rl_chain \
      --config.init_from=runs/r3_sft
"""

from configs import r3_rl


def get_config(arg: str | None = None):
  c = r3_rl.get_config(arg)
  c.rl.mode = "chain"
  return c
