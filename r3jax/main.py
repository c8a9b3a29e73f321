"""Entry point: flags only.

  python -m r3jax.main --config configs/joint.py:runlocal --workdir /tmp/joint
  python -m r3jax.main --config configs/joint.py --workdir runs/joint --mode evaluate
"""

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (path.py:arg).",
                                 lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs).")
flags.DEFINE_enum("mode", "train", ["train", "evaluate"], "What to run.")
flags.DEFINE_string("split", "test", "Split for --mode evaluate.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from r3jax import report
  from r3jax.train import loop
  if FLAGS.mode == "train" and FLAGS.config.rl.enabled:
    from r3jax.r3 import tree_rl
    result = tree_rl.train(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == "train":
    result = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  else:
    result = loop.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.split)
  print(report.table(result))


if __name__ == "__main__":
  app.run(main)
