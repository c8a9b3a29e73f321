"""scripts/tpu_pod.sh's dry run for a 4-worker pod: the gcloud command it
would send, and what each worker would run, executed here against a stand-in
python that records its arguments."""

import json
import os
import shlex
import stat
import subprocess
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POD = os.path.join(_ROOT, "scripts", "tpu_pod.sh")
GCLOUD = ["gcloud", "compute", "tpus", "tpu-vm"]


def _dry_run(*args, **env):
  out = subprocess.run(
      ["bash", POD, *args], capture_output=True, text=True, timeout=60,
      cwd=_ROOT, env=dict(os.environ, DRY_RUN="1", WORKERS="4",
                          TPU_NAME="my-v5e", ZONE="us-west4-a", **env))
  assert out.returncode == 0, out.stderr
  return out.stdout.splitlines()


def _fan_out(lines):
  """(the gcloud argv, the command every worker gets): one gcloud ssh to
  all workers, then one identical line per worker."""
  argv = shlex.split(lines[0])
  assert argv[:-1] == [*GCLOUD, "ssh", "my-v5e", "--zone", "us-west4-a",
                       "--worker=all", "--command"]
  workers = [line.split(": ", 1) for line in lines[1:]]
  assert [w for w, _ in workers] == [f"worker {i}" for i in range(4)]
  assert {c for _, c in workers} == {argv[-1]}
  return argv, argv[-1]


def test_run_sends_every_worker_the_same_command_with_its_flags_intact(
    tmp_path):
  flags = ['--config.model.enc_overrides={"width": 128, "depth": 4}',
           "--config.mesh.fsdp=4", "--config.optim.lr=3e-4"]
  lines = _dry_run("run", "configs/joint.py", "/mnt/shared/runs/my joint",
                   *flags)
  assert len(lines) == 5, lines
  _, command = _fan_out(lines)

  # A worker's home: the checkout's venv python records its arguments.
  home = tmp_path / "home"
  python = home / "r3jax" / ".venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  record = tmp_path / "argv.json"
  python.write_text("#!/usr/bin/env python3\nimport json, sys\n"
                    f"json.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
  python.chmod(python.stat().st_mode | stat.S_IEXEC)
  subprocess.run(["bash", "-c", command], check=True, timeout=60,
                 env=dict(os.environ, HOME=str(home)))
  t0 = time.monotonic()
  while not record.exists():  # the command starts it in the background
    assert time.monotonic() - t0 < 30
    time.sleep(0.05)
  time.sleep(0.2)
  assert json.loads(record.read_text()) == [
      "-m", "r3jax.main", "--config=configs/joint.py",
      "--workdir=/mnt/shared/runs/my joint", "--distributed=on",
      "--config.progress_bar=False", *flags]
  assert (home / "r3jax-logs" / "my joint.log").exists()


def test_setup_and_stop(tmp_path):
  lines = _dry_run("setup", PROJECT="p1")
  scp = shlex.split(lines[0])
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "--project"]
  assert scp[6] == "scp" and scp[8:] == [
      "my-v5e:~/r3jax.tar.gz", "--zone", "us-west4-a", "--worker=all"]
  assert scp[7].endswith(".tar.gz")
  _, command = _fan_out([line.replace("--project p1 ", "") for line in
                         lines[1:]])
  assert "make .venv/.demo" in command
  assert "--require-hashes --no-deps -r requirements/tpu.lock" in command
  _, command = _fan_out(_dry_run("stop"))
  assert command == 'pkill -TERM -f "r3jax.main" || true'
