"""Latency of one reason -> reflect -> refine round against single-pass
captioning, on the same test images, batch and hardware, in one run.

  python benchmarks/r3_latency.py --workdir runs/r3_sft   # a trained R3 model
      [--examples 256] [--batch 64] [--repeats 5] [--lookup 8]

Prints name=value lines:
  caption_ms        median time to caption the images (greedy, KV cache)
  round_ms          one reflect + refine decode of the model's own drafts with
                    prompt-lookup verification (--lookup tokens per call)
  round_plain_ms    the same without lookup
  always_ms         the round on drafts that all need an edit (reference
                    captions with one corruption), with lookup
  ratio             (caption + round) / caption
  ratio_plain       (caption + round_plain) / caption
  ratio_always_edit (caption + always) / caption
  {plain,lookup}_rightP_*  a packed round (R3Loop._round: reflections
                    decoded to <sep> / <eos>, refines only for the rows that
                    edit) on drafts of which P% are right (reference
                    captions) and the rest corrupted: its measured stop rate,
                    time, the one-pass decode of the same prompts, and
                    packed / the one-pass all-edit round (all corrupted).
                    plain's round is compacted (the rows that edit go on
                    from the reflect decode's cache in a smaller batch);
                    lookup's prefills the refine prompt again
  forced_stopP_*    the compacted round on all-corrupted drafts with the
                    first P% of reflections read as stops (0, 50, 90): its
                    stop rate, time, and time / the one-pass all-edit round
and the per-stage split: images encoded, drafts edited, generated tokens of
the reflect and refine stages per example, and decode calls per round.
Without --workdir a freshly initialised model is timed (it says so).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import ml_collections
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from r3jax import config as config_lib  # noqa: E402
from r3jax.r3 import loop as r3_loop  # noqa: E402
from r3jax.train import checkpoint as ckpt_lib  # noqa: E402
from r3jax.run import loop as train_loop  # noqa: E402
from r3jax.world import available_corruptions, corrupt, scene_from_arrays  # noqa: E402


def _config(workdir: str | None) -> ml_collections.ConfigDict:
  if workdir:
    return config_lib.load_saved(os.path.join(workdir, "config.json"))
  from configs import r3_sft
  return r3_sft.get_config()


def _time(fn, repeats):
  fn()  # compile
  out = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t0)
  return statistics.median(out)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default=None)
  p.add_argument("--examples", type=int, default=256)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--lookup", type=int, default=8)
  args = p.parse_args()

  c = _config(args.workdir)
  c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
  mesh, world, setup, init = train_loop.build(c)
  state = init()
  trained = False
  params = state["params"]
  if args.workdir:  # its latest checkpoint, else its exported params.npz
    try:
      params = ckpt_lib.load_params(args.workdir, setup.abstract["params"])
      trained = True
    except FileNotFoundError:
      pass
  records = world.records("test", args.examples)
  tok, cfg = world.tokenizer, world.world
  kw = dict(rounds=1, batch_size=args.batch, caption_len=c.tasks.caption.max_len,
            r3_len=c.tasks.refine.max_len)
  fast = r3_loop.R3Loop(setup, tok, cfg, lookup=args.lookup, **kw)
  plain = r3_loop.R3Loop(setup, tok, cfg, lookup=0, **kw)
  rng = jax.random.key(0)
  n = len(records)
  rows = list(range(n))
  lead = tok.task_id("reflect")

  with jax.set_mesh(mesh):
    kv = fast._encode(params, records)
    first = [tok.task_id("caption"), tok.sep_id]
    drafts = fast._decode(params, kv, rows, [first] * n, kw["caption_len"], rng)
    own = [[lead] + d + [tok.sep_id] for d in drafts]
    wrong = []
    for i, r in enumerate(records):
      scene = scene_from_arrays(r["scene"], cfg)
      kinds = available_corruptions(scene, cfg)
      text = corrupt(scene, np.random.default_rng(i), cfg, kinds[i % len(kinds)])
      wrong.append([lead] + tok.encode(text) + [tok.sep_id])

    def caption():
      enc = fast._encode(params, records)
      fast._decode(params, enc, rows, [first] * n, kw["caption_len"], rng)

    def round_with(lp, prompts):
      return lambda: lp._decode(params, kv, rows, prompts, kw["r3_len"], rng)

    # Packed rounds (R3Loop._round: refines only the rows whose reflection
    # names an edit) on drafts of which a share is right (a reference
    # caption, which a trained model should stop on) and the rest have one
    # corruption; against the one-pass decode of an all-edit round.
    truth = [[lead] + tok.encode(r["captions"][0]) + [tok.sep_id]
             for r in records]
    mixes = {}
    t_all_edit = {}
    for name, lp in (("plain", plain), ("lookup", fast)):
      t_all_edit[name] = _time(round_with(lp, wrong), args.repeats)
      for share in (0.0, 0.5, 0.9):
        k = int(round(share * n))
        prompts = truth[:k] + wrong[k:]
        out = lp._round(params, kv, rows, prompts, rng)
        stopped = float(np.mean([tok.sep_id not in o or not (
            o[o.index(tok.sep_id) + 1:]) for o in out]))
        mixes[name, share] = (stopped, _time(
            lambda lp=lp, p=prompts: lp._round(params, kv, rows, p, rng),
            args.repeats), _time(round_with(lp, prompts), args.repeats))
    # The compacted round (the plain loop's _round) at forced stop rates:
    # on all-edit drafts, reflections are read as stops (whatever they say)
    # until P% of the rows would stop (rows with the same reflection stop
    # together, so the measured rate is printed), and the round pays for
    # those rows' refine only up to the round's pause; against the one-pass
    # all-edit round.
    one = plain._decode(params, kv, rows, wrong, kw["r3_len"], rng)
    reflections = [tok.decode(o[:o.index(tok.sep_id)]) if tok.sep_id in o
                   else None for o in one]
    rows_of = {}
    for x in reflections:
      if x is not None:
        rows_of[x] = rows_of.get(x, 0) + 1
    real_read = r3_loop.rewards_lib.read_branch
    forced = {}
    for share in (0.0, 0.5, 0.9):
      chosen, covered = set(), 0
      for x in dict.fromkeys(x for x in reflections if x is not None):
        if covered + rows_of[x] <= share * n:
          chosen.add(x)
          covered += rows_of[x]
      r3_loop.rewards_lib.read_branch = (
          lambda reflection, refined, chosen=chosen: (
              True, reflection in chosen))
      try:
        out = plain._round(params, kv, rows, wrong, rng)
        stopped = float(np.mean([o[-1:] == [tok.sep_id] or tok.sep_id not in o
                                 for o in out]))
        forced[share] = (stopped, _time(
            lambda: plain._round(params, kv, rows, wrong, rng), args.repeats))
      finally:
        r3_loop.rewards_lib.read_branch = real_read
    t_cap = _time(caption, args.repeats)
    t_round = _time(round_with(fast, own), args.repeats)
    t_plain = _time(round_with(plain, own), args.repeats)
    t_always = _time(round_with(fast, wrong), args.repeats)
    outs = {name: fast._decode(params, kv, rows, prompts, kw["r3_len"], rng)
            for name, prompts in (("own", own), ("wrong", wrong))}

  def split(outs):
    edited = [o for o in outs if tok.sep_id in o]
    reflect = [o.index(tok.sep_id) if tok.sep_id in o else len(o) for o in outs]
    refine = [len(o) - o.index(tok.sep_id) - 1 for o in edited]
    return (len(edited) / len(outs), float(np.mean(reflect)),
            float(np.mean(refine)) if refine else 0.0)

  dev = jax.devices()[0]
  print(f"hardware={dev.platform}:{getattr(dev, 'device_kind', '?')} "
        f"x{jax.device_count()} host_cpus={os.cpu_count()} "
        f"({platform.processor() or platform.machine()})")
  print(f"model={'trained ' + args.workdir if trained else 'untrained (no --workdir checkpoint)'} "
        f"examples={n} batch={args.batch} lookup={args.lookup} "
        f"repeats={args.repeats}")
  print(f"caption_ms={1e3 * t_cap:.1f}")
  print(f"round_ms={1e3 * t_round:.1f}")
  print(f"round_plain_ms={1e3 * t_plain:.1f}")
  print(f"always_ms={1e3 * t_always:.1f}")
  print(f"ratio={(t_cap + t_round) / t_cap:.3f}")
  print(f"ratio_plain={(t_cap + t_plain) / t_cap:.3f}")
  print(f"ratio_always_edit={(t_cap + t_always) / t_cap:.3f}")
  for name, o in outs.items():
    edited, reflect, refine = split(o)
    print(f"{name}_drafts_edited={edited:.3f} {name}_reflect_tokens={reflect:.1f} "
          f"{name}_refine_tokens={refine:.1f}")
  print(f"caption_tokens={np.mean([len(d) for d in drafts]):.1f}")
  for (name, share), (stopped, t, t_one) in mixes.items():
    tag = f"{name}_right{int(100 * share)}"
    print(f"{tag}_stop_rate={stopped:.3f} {tag}_packed_ms={1e3 * t:.1f} "
          f"{tag}_one_pass_ms={1e3 * t_one:.1f} "
          f"{tag}_packed_vs_all_edit={t / t_all_edit[name]:.3f}")
  for name, t in t_all_edit.items():
    print(f"{name}_all_edit_one_pass_ms={1e3 * t:.1f}")
  for share, (stopped, t) in forced.items():
    tag = f"forced_stop{int(100 * share)}"
    print(f"{tag}_stop_rate={stopped:.3f} {tag}_compacted_ms={1e3 * t:.1f} "
          f"{tag}_vs_all_edit={t / t_all_edit['plain']:.3f}")


if __name__ == "__main__":
  main()
