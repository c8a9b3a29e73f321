#!/usr/bin/env bash
# Runs r3jax on every host of a Cloud TPU VM slice (v4 / v5e / v5p pods).
#
#   scripts/tpu_pod.sh setup                       # same code + venv on all hosts
#   scripts/tpu_pod.sh run configs/joint.py /mnt/shared/runs/joint [flags...]
#   scripts/tpu_pod.sh logs                        # tail every host's log
#   scripts/tpu_pod.sh stop                        # SIGTERM: save, then exit
#   DRY_RUN=1 WORKERS=4 scripts/tpu_pod.sh run ... # print, send nothing
#
# Set TPU_NAME and ZONE (and PROJECT if gcloud has no default). `setup` copies
# this checkout (tracked files) to ~/r3jax on every worker and installs there
# the locked packages of `make demo` plus the locked libtpu
# (requirements/*.lock), so all hosts run identical code and packages. `run` starts the same command on all workers at once; r3jax.main
# detects the pod (TPU_WORKER_HOSTNAMES) and calls jax.distributed.initialize,
# each host reads its own shard of the data, and process 0 writes the logs.
# The workdir must be one directory every host sees (a Filestore/NFS mount or
# a gcsfuse-mounted bucket): orbax writes each host's checkpoint shards there.
# Each host's stdout/stderr goes to ~/r3jax-logs/<run>.log on that host.
# A rerun of the same `run` command resumes from the last checkpoint; `stop`
# (or a maintenance event's SIGTERM) saves one at the step all hosts agree on.
# With DRY_RUN=1 every command is printed instead of run: the gcloud command
# line, then the shell command each of the WORKERS workers (default 1) would
# run.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone}"
GCLOUD=(gcloud compute tpus tpu-vm)
[[ -n "${PROJECT:-}" ]] && GCLOUD+=(--project "$PROJECT")
# Runs a command line, or with DRY_RUN=1 prints it, shell-quoted.
send() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@" | sed 's/ $//'; echo
  else "$@"; fi
}
all() {
  send "${GCLOUD[@]}" ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$1"
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    for ((w = 0; w < ${WORKERS:-1}; w++)); do printf 'worker %d: %s\n' "$w" "$1"; done
  fi
}

cmd="${1:-}"; shift || true
case "$cmd" in
  setup)
    archive=$(mktemp /tmp/r3jax.XXXX.tar.gz)
    git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$archive" HEAD
    send "${GCLOUD[@]}" scp "$archive" "$TPU_NAME:~/r3jax.tar.gz" --zone "$ZONE" --worker=all
    # The locked packages of the demo's environment plus the locked libtpu.
    all 'rm -rf ~/r3jax && mkdir -p ~/r3jax && tar -xzf ~/r3jax.tar.gz -C ~/r3jax && cd ~/r3jax && make .venv/.demo && .venv/bin/pip install -q --require-hashes --no-deps -r requirements/tpu.lock'
    rm -f "$archive" ;;
  run)
    config="${1:?config file}"; workdir="${2:?workdir on a shared mount}"; shift 2
    run=$(basename "$workdir")
    extra=$(printf ' %q' "$@")
    all "mkdir -p ~/r3jax-logs && cd ~/r3jax && nohup .venv/bin/python -m r3jax.main$(printf ' %q' \
         "--config=$config" "--workdir=$workdir") --distributed=on --config.progress_bar=False$extra \
> ~/r3jax-logs/$(printf %q "$run").log 2>&1 < /dev/null &"
    [[ "${DRY_RUN:-0}" == 1 ]] || echo "started on all workers; logs: scripts/tpu_pod.sh logs" ;;
  logs)
    all 'tail -n 20 ~/r3jax-logs/*.log' ;;
  stop)
    all 'pkill -TERM -f "r3jax.main" || true' ;;
  *)
    sed -n '2,25p' "$0"; exit 2 ;;
esac
