"""Runs a study's arms over seeds in-process, then writes its RESULTS.md.

  python -m experiments.run dilemma                     # 3 seeds, every arm
  python -m experiments.run mitigation --seeds 1 --arms pcgrad,famo --scale
  python -m experiments.run tiny --config.data.dir=/tmp/d --config.mesh.data=1
  python -m experiments.run r3 --dry-run                # print the commands
  python -m experiments.run r3 --seed 2                 # seed 2 only

`--config.KEY=VALUE` overrides a config field in every arm, spelt as for
`python -m r3jax.main` (r3jax.config.override; a tasks.NAME.* key reaches the
arms that train NAME). The arguments of an arm's config file
(`configs/joint.py:runlocal,seed=N`) are its recipe, not field overrides.

Each run lives in <root>/<study>/runs/<arm>/seed<k> with a result.json (final
metrics, wall seconds, the `python -m r3jax.main` command that reproduces it,
run from the repository root; paths inside the repository are relative) and
a series.csv (the logged series RESULTS.md reads, subsampled: git keeps it,
not metrics.jsonl; r3jax.analysis.interference.series);
an arm whose result.json exists is not run again (one made by a different
command is an error). Run the printed commands from the repository root. Arms run after the arm they
start from (`Arm.after`), which is added when --arms leaves it out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from r3jax import config as config_lib
from r3jax.analysis import interference
from r3jax.train import checkpoint as ckpt_lib
from experiments import report
from experiments import studies as studies_lib
from experiments import wallclock

ROOT = studies_lib.ROOT


def shown(path: str) -> str:
  """A path as commands show it: relative to the repository root (where they
  run) when inside it, so that kept results stay valid in any clone."""
  path = os.path.abspath(path)
  inside = os.path.commonpath([path, ROOT]) == ROOT
  return os.path.relpath(path, ROOT) if inside else path


def _flag_value(v: Any) -> str:
  if isinstance(v, (list, tuple, dict)):
    return shlex.quote(json.dumps(v, separators=(",", ":")))
  return shlex.quote(str(v))


def workdir(root: str, study: str, arm: str, seed: int) -> str:
  return os.path.join(root, study, "runs", arm, f"seed{seed}")


def resolve(study: studies_lib.Study, arm: studies_lib.Arm, seed: int,
            root: str, sets: Mapping[str, str], scale: bool = False,
            steps: int | None = None
            ) -> tuple[ml_collections.ConfigDict, list[str]]:
  """The arm's config for `seed` (arm overrides, then the study's scale, then
  `sets`: the command line's --config.KEY=VALUE overrides, {KEY: VALUE text},
  then `steps` (an equal wall-clock arm's), then the starting point) and the
  command that reproduces it."""
  spec = arm.config.format(seed=seed)
  # An exported start's world, model and formats reach every arm; an arm
  # that continues another then takes that arm's parameters (init_from).
  base = os.path.join(ROOT, study.base) if study.base else ""
  config = config_lib.from_file(spec + (f",base={base}" if base else ""), ROOT)
  spec += f",base={shown(base)}" if base else ""
  applied: dict[str, Any] = {}

  def trains(key: str) -> bool:  # a tasks.X.* key reaches the arms with X
    parts = key.split(".")
    return parts[0] != "tasks" or len(parts) < 3 or parts[1] in config.tasks

  layers = [arm.overrides, study.scale if scale else {}]
  for layer in layers:
    for key, value in layer.items():
      if trains(key):
        config_lib.override(config, key, value)
        applied[key] = value
  for key, text in sets.items():
    if not trains(key):
      continue
    config_lib.override(config, key, text, from_text=True)
    applied[key] = config_lib.get_value(config, key)
  if steps is not None:  # after `sets`, which may change the reference's steps
    config_lib.override(config, "total_steps", steps)
    applied["total_steps"] = steps
  if arm.after:  # its parameters start from that arm's run
    value = os.path.abspath(workdir(root, study.name, arm.after, seed))
    config_lib.override(config, "init_from", value)
    applied["init_from"] = shown(value)
  config_lib.validate(config)
  wd = workdir(root, study.name, arm.name, seed)
  command = ["python", "-m", "r3jax.main", f"--config={spec}",
             f"--workdir={shlex.quote(shown(wd))}"]
  command += [f"--config.{k}={_flag_value(v)}" for k, v in applied.items()]
  return config, command


def budget_steps(study: studies_lib.Study, arms: Sequence[studies_lib.Arm],
                 root: str, sets: Mapping[str, str], scale: bool,
                 dry_run: bool, log=print, devices=None) -> dict[str, Any]:
  """Steps of each equal wall-clock arm (Arm.budget) in `arms`, from the
  study's step times (timed now when <root>/<study>/step_seconds.json lacks
  them; with dry_run "?" instead)."""
  timed = [a for a in arms if a.budget]
  if not timed:
    return {}
  refs = {a.budget for a in timed}
  configs, prints = {}, {}
  for r in refs:
    config, command = resolve(study, study.arm(r), 0, root, sets, scale)
    configs[f"{r}:plain"] = wallclock.plain(config)
    prints[f"{r}:plain"] = wallclock.fingerprint(command + ["plain"])
  for a in timed:
    configs[a.name], command = resolve(study, a, 0, root, sets, scale)
    prints[a.name] = wallclock.fingerprint(command)
  path = os.path.join(root, study.name, "step_seconds.json")
  if dry_run and not os.path.exists(path):
    return {a.name: "?" for a in timed}
  seconds = wallclock.load_or_measure(path, configs, prints, log,
                                      devices=devices)["seconds"]
  return {a.name: wallclock.budget_steps(
      configs[f"{a.budget}:plain"].total_steps, seconds[f"{a.budget}:plain"],
      seconds[a.name]) for a in timed}


def train(config: ml_collections.ConfigDict, workdir: str,
          devices=None) -> dict[str, Any]:
  """What r3jax.main runs for `config` (r3jax.run.train)."""
  from r3jax import run  # noqa: PLC0415
  return run.train(config, workdir, devices)


def hardware() -> dict[str, Any]:
  import jax  # noqa: PLC0415
  return {"device_kind": jax.devices()[0].device_kind,
          "devices": jax.device_count(), "cpus": os.cpu_count()}


def run_study(name: str, root: str = "experiments",
              seeds: int | Sequence[int] | None = None,
              arms: Sequence[str] | None = None,
              sets: Mapping[str, str] | None = None, scale: bool = False,
              dry_run: bool = False, log=print, devices=None
              ) -> list[dict[str, Any]]:
  """Runs (or with dry_run, prints the commands of) the study's arms over
  seeds 0..seeds-1, or the listed seeds (on `devices`, default all); returns
  one record per run: arm, seed, command, status ("ran", "done" (result.json
  existed) or "dry-run")."""
  study = studies_lib.get(name)
  ordered = study.order(arms)
  sets = dict(sets or {})
  steps = budget_steps(study, ordered, root, sets, scale, dry_run, log, devices)
  records = []
  if seeds is None or isinstance(seeds, int):
    seeds = range(study.seeds if seeds is None else seeds)
  for seed in seeds:
    if not dry_run:
      _restore_starts(study, ordered, seed, root, sets, scale, log, devices)
    for arm in ordered:
      if steps.get(arm.name) == "?":
        log(f"{arm.name} (seed {seed}): steps from the step timing, which "
            "runs first")
        records.append({"arm": arm.name, "seed": seed, "status": "dry-run"})
        continue
      config, command = resolve(study, arm, seed, root, sets, scale,
                                steps.get(arm.name))
      line = " ".join(command)
      wd = workdir(root, study.name, arm.name, seed)
      path = os.path.join(wd, "result.json")
      record = {"arm": arm.name, "seed": seed, "command": line}
      if dry_run:
        log(line)
        records.append({**record, "status": "dry-run"})
        continue
      if os.path.exists(path):
        with open(path) as f:
          done = json.load(f)
        if done["command"] != line:
          raise ValueError(f"{path} was made by another command:\n  "
                           f"{done['command']}\nnot\n  {line}\nremove it or "
                           "use another --root")
        log(f"[{study.name}] {arm.name} seed {seed}: done ({path})")
        records.append({**record, "status": "done"})
        continue
      log(f"[{study.name}] {arm.name} seed {seed}: {line}")
      t0 = time.perf_counter()
      metrics = train(config, wd, devices)
      wall = time.perf_counter() - t0
      _export_if_start(study, arm, wd)
      interference.write_series(wd)
      result = {"study": study.name, "arm": arm.name, "seed": seed,
                "after": arm.after, "command": line,
                "metrics": {k: float(v) for k, v in metrics.items()},
                "wall_seconds": wall, "hardware": hardware()}
      os.makedirs(wd, exist_ok=True)
      _write_json(path, result)
      records.append({**record, "status": "ran"})
  return records


def _write_json(path: str, obj: Any) -> None:
  """Whole or not at all: a killed run leaves no half-written file."""
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(path + ".tmp", path)


def _result_path(root: str, study, arm: str, seed: int) -> str:
  return os.path.join(workdir(root, study.name, arm, seed), "result.json")


def _restore_starts(study, ordered: Sequence[studies_lib.Arm], seed: int,
                    root: str, sets: Mapping[str, str], scale: bool, log,
                    devices) -> None:
  """Git keeps each run's result.json, and the exported final parameters
  (params.npz) of the runs others start from, but not checkpoints. Before
  the seed's pending arms run, every run they start from that has a result
  but neither its final checkpoint nor params.npz is trained again by its
  recorded command.
  Runs are bit-reproducible on one machine but not across CPU types: when the
  run trained again does not reproduce its recorded metrics, its result.json
  takes the new metrics (the old and new ones are kept in remade.json), and
  the results of every arm after it, all made from the old checkpoint, are
  set aside as result.superseded.json so that those arms run again. A start
  counts as present when its final step's checkpoint is (an interrupted
  remake resumes)."""
  pending = [a for a in ordered
             if not os.path.exists(_result_path(root, study, a.name, seed))]
  starts = []
  for a in pending:
    starts += [c for c in reversed(_starts(study, a)) if c not in starts]
  for start in starts:
    path = _result_path(root, study, start.name, seed)
    if not os.path.exists(path):
      continue
    with open(path) as f:
      done = json.load(f)
    config, command = resolve(study, start, seed, root, sets, scale,
                              _steps_of(done["command"]))
    if " ".join(command) != done["command"]:
      raise ValueError(f"{path} was made by another command:\n  "
                       f"{done['command']}\nnot\n  {' '.join(command)}")
    wd = workdir(root, study.name, start.name, seed)
    if os.path.isdir(os.path.join(wd, "checkpoints", str(config.total_steps))):
      if not os.path.exists(os.path.join(wd, ckpt_lib.PARAMS_FILE)):
        ckpt_lib.export_params(wd)  # a start trained before exports existed
      continue  # its final checkpoint is here
    if os.path.exists(os.path.join(wd, ckpt_lib.PARAMS_FILE)):
      continue  # its exported parameters are (git keeps them)
    if not _remake(study, start, seed, wd, done, config, log, devices):
      for a in study.arms:
        if start in _starts(study, a):
          path = _result_path(root, study, a.name, seed)
          if os.path.exists(path):
            os.replace(path, path.replace("result.json",
                                          "result.superseded.json"))
            log(f"[{study.name}] {a.name} seed {seed}: its result came from "
                f"the old {start.name} run; it runs again")


def _export_if_start(study, arm: studies_lib.Arm, wd: str) -> None:
  """The final parameters of an arm that others start from, exported to
  params.npz beside its result.json (both kept in git): a fresh clone then
  continues the study from the same parameters on any machine."""
  if any(a.after == arm.name for a in study.arms):
    ckpt_lib.export_params(wd)


def _starts(study, arm: studies_lib.Arm) -> list[studies_lib.Arm]:
  """The arms `arm` starts from: its `after`, that arm's, and so on."""
  out, name = [], arm.after
  while name:
    out.append(study.arm(name))
    name = out[-1].after
  return out


def _remake(study, start: studies_lib.Arm, seed: int, wd: str,
            done: dict[str, Any], config: ml_collections.ConfigDict, log,
            devices) -> bool:
  """Trains `start` again in `wd` by its recorded command (`done`: its
  result.json, `config`: that command's config); True when it reproduced
  its recorded metrics (timings aside)."""
  path = os.path.join(wd, "result.json")
  log(f"[{study.name}] {start.name} seed {seed}: its checkpoint is missing; "
      f"training it again ({done['command']})")
  t0 = time.perf_counter()
  metrics = {k: float(v) for k, v in train(config, wd, devices).items()}
  wall = time.perf_counter() - t0
  _export_if_start(study, start, wd)
  interference.write_series(wd)
  differ = {k: [v, metrics.get(k)] for k, v in done["metrics"].items()
            if not k.endswith("_seconds") and metrics.get(k) != v}
  _write_json(os.path.join(wd, "remade.json"),
              {"hardware": hardware(), "before": done["hardware"],
               "differ": differ})
  if not differ:
    return True
  log(f"WARNING: {wd} trained again differs from its result.json in "
      f"{len(differ)} metrics (remade.json): "
      + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in list(differ.items())[:4]))
  done.update(metrics=metrics, wall_seconds=wall, hardware=hardware())
  _write_json(path, done)
  return False


def _steps_of(command: str) -> int | None:
  """The equal wall-clock steps written into a recorded command, if any."""
  m = re.search(r"--config\.total_steps=(\d+)", command)
  return int(m.group(1)) if m else None


def accept_overrides(parser: argparse.ArgumentParser) -> None:
  """Names the --config.KEY=VALUE overrides in `parser`'s usage and help
  (`overrides` reads them), once its other arguments are added."""
  parser.usage = (parser.format_usage().removeprefix("usage: ").rstrip()
                  + " [--config.KEY=VALUE ...]")
  parser.epilog = (
      "config overrides:\n"
      "  --config.KEY=VALUE    a config field, every arm (repeatable; spelt\n"
      "                        as for python -m r3jax.main; tasks.NAME.*\n"
      "                        keys: the arms that train NAME)")


def overrides(parser: argparse.ArgumentParser,
              args: Sequence[str]) -> dict[str, str]:
  """The arguments `parser` left (parse_known_args) as {KEY: VALUE}: each
  must be a --config.KEY=VALUE override, else `parser` exits with an error
  naming it."""
  try:
    return config_lib.parse_overrides(args)
  except ValueError as e:
    parser.error(str(e))


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m experiments.run", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("study", help=f"one of {sorted(studies_lib.STUDIES)}")
  parser.add_argument("--seeds", type=int, default=None,
                      help="seeds 0..N-1 (default: the study's)")
  parser.add_argument("--seed", type=int, action="append", default=None,
                      help="only this seed (repeatable): seeds in parallel "
                      "processes, one --seed each")
  parser.add_argument("--arms", default=None,
                      help="comma-separated arms (default: all)")
  parser.add_argument("--root", default="experiments")
  parser.add_argument("--scale", action="store_true",
                      help="apply the study's reduced-size overrides")
  parser.add_argument("--dry-run", action="store_true",
                      help="print the commands, run nothing")
  accept_overrides(parser)
  args, rest = parser.parse_known_args(argv)
  sets = overrides(parser, rest)
  try:
    arms = [a for a in args.arms.split(",") if a] if args.arms else None
    seeds = args.seeds
    if args.seed is not None:
      if args.seeds is not None:
        raise ValueError("give --seeds N or --seed K, not both")
      if min(args.seed) < 0:
        raise ValueError(f"--seed must be >= 0, not {min(args.seed)}")
      seeds = args.seed
    run_study(args.study, args.root, seeds, arms, sets, args.scale,
              args.dry_run)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not args.dry_run:
    path = report.collect(args.root, args.study)
    print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
