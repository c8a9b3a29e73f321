"""R3-RL: Tree-RL (GRPO) on the reason and reflect + refine stages, from an
R3-SFT checkpoint.

  python -m r3jax.main --config configs/r3_sft.py --workdir runs/r3_sft
  python -m r3jax.main --config configs/r3_rl.py --workdir runs/r3_rl \\
      --config.init_from=runs/r3_sft
  args: runlocal (CPU smoke run), seed=N, steps=N
        base=DIR (start from that run or exported base, e.g.
        experiments/competence/base, with its world and model settings)
"""

from r3jax import config as config_lib

TASKS = ("caption", "vqa", "ita", "reflect", "refine")  # all are evaluated


def get_config(arg: str | None = None):
  c = config_lib.world_experiment(arg, TASKS)
  a = config_lib.parse_arg(arg, runlocal=False, seed=0, steps=0,
                           method="weighted_sum", gen_weight=1.0, base="")
  c.rl.enabled = True
  # As the reference code samples and trains: temperature 0.9 with top-p 0.9
  # (its top-k 50 never acts), the vision encoder frozen, the refined output
  # a loss term of its own with weight 2 (there an image term, per image;
  # here per token). Not in the reference: the supervised VQA / ITA loss in
  # every step, which keeps RL from collapsing ITA's "yes" answers.
  c.rl.update(top_k=0, top_p=0.9, freeze=("encoder",), refine_weight=2.0,
              supervised_weight=1.0)
  # The reference's RL optimizer: AdamW, beta2 0.95, no weight decay, a
  # constant learning rate after a short warmup. Its rate is 5e-6 over 1,000
  # steps; this small model's is 5e-5 over 200 (experiments/r3/rl_pilot).
  c.optim.update(lr=5e-5, warmup_steps=10, end_lr_frac=1.0, b2=0.95,
                 weight_decay=0.0)
  if a.runlocal:
    c.rl.groups, c.rl.group_size = 2, 4
    c.optim.warmup_steps = 1
  else:
    c.total_steps = a.steps or 200
    # Every step logged: root and branch steps alternate.
    c.log_every_steps, c.ckpt_every_steps, c.eval_every_steps = 1, 50, 100
  return c
