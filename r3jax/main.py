"""Entry point: flags only.

  python -m r3jax.main --config configs/joint.py:runlocal --workdir /tmp/joint
  python -m r3jax.main --config configs/joint.py --workdir runs/joint --mode evaluate

Multi-process (see r3jax/distributed.py): TPU pods and SLURM jobs are detected;
elsewhere give every process the same command plus
  --coordinator_address HOST:PORT --num_processes N --process_id I

Exit status: 0 when the run finished; 75 (EX_TEMPFAIL) when SIGTERM or SIGINT
stopped training after saving a checkpoint of the current step (all processes
stop at the same step): rerun the same command to resume; 1 on an error, e.g. a
non-finite loss (r3jax/train/nonfinite.py).

Output: the progress bar, a line per periodic evaluation, the final table,
warnings and errors. `--verbosity=0` (absl's flag, also -v 0) adds the
libraries' INFO lines (orbax, TFDS); see r3jax/logs.py.
"""

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (path.py:arg).",
                                 lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs).")
flags.DEFINE_enum("mode", "train", ["train", "evaluate"], "What to run.")
flags.DEFINE_string("split", "test", "Split for --mode evaluate.")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "jax.distributed: auto (explicit flags, TPU pod or SLURM), on "
                  "(always; JAX detects the cluster), off.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0 (or R3JAX_COORDINATOR).")
flags.DEFINE_integer("num_processes", None, "Processes in the run "
                     "(or R3JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "This process's id (or R3JAX_PROCESS_ID).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS
EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: not done, run again


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    from r3jax import logs
    logs.quiet()
  from r3jax import distributed
  distributed.initialize(FLAGS.distributed, FLAGS.coordinator_address,
                         FLAGS.num_processes, FLAGS.process_id)
  from r3jax import report
  from r3jax import run
  from r3jax.run import loop
  from r3jax.train import preemption
  try:
    if FLAGS.mode == "evaluate":
      result = loop.evaluate_checkpoint(FLAGS.config, FLAGS.workdir,
                                        FLAGS.split)
    else:
      result = run.train(FLAGS.config, FLAGS.workdir)
  except preemption.Preempted as e:
    print(f"{e}; exit status {EXIT_PREEMPTED}", flush=True)
    return EXIT_PREEMPTED
  import jax
  if jax.process_index() == 0:
    print(report.table(result, world=FLAGS.config.data.source == "world"))


if __name__ == "__main__":
  app.run(main)
