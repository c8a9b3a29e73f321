"""`make demo`: joint captioning + VQA + ITA training on the embedded world,
then a test-split evaluation table.

  python -m r3jax.demo --workdir runs/demo [--config configs/joint.py]
"""

import time

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", "configs/joint.py",
                                "Config file (path.py:arg).", lock_config=True)
flags.DEFINE_string("workdir", "runs/demo", "Run directory.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax
  from r3jax import report
  from r3jax.train import loop
  c = FLAGS.config
  print(f"r3jax demo: joint training of {', '.join(c.tasks)} for "
        f"{c.total_steps} steps on {len(jax.devices())} {jax.devices()[0].platform}"
        f" device(s); workdir {FLAGS.workdir} (rerun resumes)")
  t0 = time.perf_counter()
  result = loop.train_and_evaluate(c, FLAGS.workdir)
  result["total_seconds"] = time.perf_counter() - t0
  print(f"\nTest split ({c.final_eval.max_examples if c.final_eval.max_examples > 0 else 'all'}"
        " images, greedy decoding with the KV cache):")
  print(report.table(result))
  print(f"total wall time {result['total_seconds']:.0f} s (dataset build, "
        "compilation, training and evaluation)")


if __name__ == "__main__":
  app.run(main)
