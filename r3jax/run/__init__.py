"""A run assembled: its data source (the world or COCO/VQAv2), the state it
starts from, its evaluation, the training loop and R3-RL's run."""


def train(config, workdir: str, devices=None) -> dict:
  """Trains `config` in `workdir` (resuming it) and evaluates it: R3-RL
  (r3jax.run.rl) when config.rl.enabled, else the supervised loop; returns
  the final evaluation's metrics."""
  if config.rl.enabled:
    from r3jax.run import rl  # noqa: PLC0415 (jax-heavy)
    return rl.train(config, workdir, devices)
  from r3jax.run import loop  # noqa: PLC0415
  return loop.train_and_evaluate(config, workdir, devices)
