"""Relation accuracy per phrasing: does a run compare positions, read the
phrase, or neither?

  python -m experiments.competence.relations WORKDIR [--split validation]
      [--max-examples 256] [--out FILE.json]

Every relation question of the split's first images is asked as drawn
(grouped by its phrasing: "left of", "to the left of", "right of", ...) and
rewritten to the phrasing with the same answer ("is B left of A ?" for "is A
right of B ?", r3jax.data.tasks.canonical_relation). A model that compares
the two objects' positions but ignores the phrase answers the canonical
forms right and the swapped phrasings ("right of", "below") wrong; one that
does neither is at 0.5 everywhere. Each group is also split by the true
answer, which shows a model that answers one word whatever is asked.

The same images are also captioned (greedy) and every relation clause of
the captions is checked against the scene ("captions: relation clauses
true"): whether the generation pathway orders the objects it names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from r3jax.analysis import competence
from r3jax.data import tasks as tasks_lib

# The written grid indices' scores (relation_answers="trace"; world_setup's
# VQA scorer).
TRACE = ("accuracy", "a", "b", "consistent")


def phrasing(question: str) -> str:
  """The relation words of a relation question ("to the right of")."""
  words = question.split()
  start, end = tasks_lib.relation_span(words)
  return " ".join(words[start:end])


def relation_records(records):
  """Copies of `records` that hold only their relation questions, each as
  drawn and canonical; the question type names the form and the answer
  ("as drawn: right of | no", "canonical: left of | yes")."""
  out = []
  for r in records:
    qs, ans, types = [], [], []
    for t, q, a in zip(r["vqa_types"], r["vqa_questions"], r["vqa_answers"]):
      if t != "relation":
        continue
      c = tasks_lib.canonical_relation(q)
      for form, text in (("as drawn", q), ("canonical", c)):
        qs.append(text)
        ans.append(a)
        types.append(f"{form}: {phrasing(text)} | {a}")
    if qs:
      out.append({**r, "vqa_questions": qs, "vqa_answers": ans,
                  "vqa_types": types})
  return out


def breakdown(workdir: str, split: str = "validation", max_examples: int = 256
              ) -> dict[str, dict[str, float]]:
  """{group: {"accuracy", "count"}} for the groups of relation_records and
  their unions over the answer ("as drawn: right of") and over phrasings
  ("as drawn", "canonical")."""
  import jax  # noqa: PLC0415

  from r3jax import config as config_lib  # noqa: PLC0415
  from r3jax.eval import evaluator as evaluator_lib  # noqa: PLC0415
  from r3jax.r3 import loop as r3_loop  # noqa: PLC0415
  from r3jax.world import edit, scene_from_arrays  # noqa: PLC0415
  from r3jax.world.facts import is_true  # noqa: PLC0415
  from r3jax.train import checkpoint as ckpt_lib  # noqa: PLC0415
  from r3jax.train import loop  # noqa: PLC0415
  from r3jax.train import world_setup  # noqa: PLC0415

  config = competence.eval_config(workdir, split, max_examples)
  mesh, world, setup, _ = loop.build(config)
  params = ckpt_lib.load_params(workdir, setup.abstract["params"])
  records = relation_records(world.records(split, max_examples))
  tasks = {"vqa": config.tasks.vqa}
  images = world.records(split, max_examples)
  caption_len = config_lib.evaluated_tasks(config).get(
      "caption", config_lib.all_tasks()["caption"]).max_len
  loop_ = r3_loop.R3Loop(setup, world.tokenizer, world.world, rounds=1,
                         batch_size=config.final_eval.batch_size,
                         caption_len=caption_len, r3_len=caption_len)
  with jax.set_mesh(mesh):
    got = evaluator_lib.Evaluator(
        setup, records, world.tokenizer, tasks, config.final_eval.batch_size,
        {"vqa": world_setup.make_vqa_scorer(
            world.world, config.data.relation_answers)}).run(params)
    captions = loop_.captions(params, images)
  true = clauses = 0
  for caption, r in zip(captions, images):
    scene = scene_from_arrays(r["scene"], world.world)
    for sentence in edit.read(caption, world.world):
      if isinstance(sentence, edit.Relations):
        for c in sentence.clauses:
          if c.bad is None:
            clauses += 1
            true += is_true(c.relation, scene)
  groups = {}
  prefix = "vqa/qtype/"
  for key, v in got.items():
    if (key.startswith(prefix) and key.endswith("/accuracy") and
        "/trace/" not in key):
      name = key[len(prefix):-len("/accuracy")]
      # with relation_answers="trace": the written grid indices' scores
      trace = {k: got[f"{prefix}{name}/trace/{k}"] for k in TRACE
               if f"{prefix}{name}/trace/{k}" in got}
      groups[name] = (v, got[f"{prefix}{name}/count"], trace)
  out = {}
  for name, (acc, n, trace) in groups.items():
    out[name] = {"accuracy": acc, "count": n,
                 **{f"trace {k}": v for k, v in trace.items()}}
    for union in (name.split(" | ")[0], name.split(":")[0]):
      u = out.setdefault(union, {"hits": {}, "count": 0.0})
      for k, v in {"accuracy": acc, **{f"trace {k}": v for k, v in
                                       trace.items()}}.items():
        u["hits"][k] = u["hits"].get(k, 0.0) + v * n
      u["count"] += n
  for u in out.values():
    if "hits" in u:
      u.update({k: v / max(u["count"], 1) for k, v in u.pop("hits").items()})
  out = dict(sorted(out.items()))
  out["captions: relation clauses true"] = {
      "accuracy": true / max(clauses, 1), "count": clauses}
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("workdir")
  p.add_argument("--split", default="validation")
  p.add_argument("--max-examples", type=int, default=256)
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  out = breakdown(args.workdir, args.split, args.max_examples)
  for name, v in out.items():
    trace = "".join(f"  {k} {v[k]:.3f}" for k in sorted(v) if "trace" in k)
    print(f"{name:32s} {v['accuracy']:.3f}  ({int(v['count'])}){trace}")
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      json.dump({"workdir": args.workdir, "split": args.split,
                 "max_examples": args.max_examples, "groups": out}, f,
                indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
