"""Relation accuracy per phrasing: does a run compare positions, read the
phrase, or neither?

  python -m experiments.competence.relations WORKDIR [--split validation]
      [--max-examples 256] [--out FILE.json]
  python -m experiments.competence.relations --compare A.json B.json
      [--form canonical]
  python -m experiments.competence.relations --compare-captions A.json B.json
  python -m experiments.competence.relations WORKDIR --caption-traces OUT.json
  python -m experiments.competence.relations WORKDIR --positions

Every relation question of the split's first images is asked as drawn
(grouped by its phrasing: "left of", "to the left of", "right of", ...) and
rewritten to the phrasing with the same answer ("is B left of A ?" for "is A
right of B ?", r3jax.data.tasks.canonical_relation). A model that compares
the two objects' positions but ignores the phrase answers the canonical
forms right and the swapped phrasings ("right of", "below") wrong; one that
does neither is at 0.5 everywhere. Each group is also split by the true
answer, which shows a model that answers one word whatever is asked.

--out also keeps every question's prediction, so that --compare can pair
two runs question by question (an exact McNemar test) and test each
against chance and against answering "yes" always.

The same images are also captioned (greedy) and every relation clause of
the captions is checked against the scene ("captions: relation clauses
true"): whether the generation pathway orders the objects it names; so is
every kind they list ("captions: stated kinds true"). --out also keeps each
caption as written and the truth of its relation clauses.
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


def breakdown(workdir: str, split: str = "validation", max_examples: int = 256,
              questions: list | None = None, captions_out: list | None = None
              ) -> dict[str, dict[str, float]]:
  """{group: {"accuracy", "count"}} for the groups of relation_records and
  their unions over the answer ("as drawn: right of") and over phrasings
  ("as drawn", "canonical"). `questions`, when given, receives one row per
  question asked: {"record", "group", "question", "answer", "prediction",
  "correct"} (what `compare` pairs); `captions_out`, one row per image:
  {"record", "caption"} (the greedy caption as written) and its relation
  facts ("relations": [true or false, ...])."""
  import jax  # noqa: PLC0415

  from r3jax import config as config_lib  # noqa: PLC0415
  from r3jax.eval import evaluator as evaluator_lib  # noqa: PLC0415
  from r3jax.eval.metrics import normalize  # noqa: PLC0415
  from r3jax.r3 import loop as r3_loop  # noqa: PLC0415
  from r3jax.world import edit, scene_from_arrays  # noqa: PLC0415
  from r3jax.world.facts import KindCount, is_true  # noqa: PLC0415
  from r3jax.world.verify import parse_clauses  # noqa: PLC0415
  from r3jax.world.vqa import strip_positions  # noqa: PLC0415
  from r3jax.train import checkpoint as ckpt_lib  # noqa: PLC0415
  from r3jax.run import loop  # noqa: PLC0415
  from r3jax.run import world_setup  # noqa: PLC0415

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
  score = world_setup.make_vqa_scorer(world.world,
                                      config.data.relation_answers)
  with jax.set_mesh(mesh):
    evaluator = evaluator_lib.Evaluator(
        setup, records, world.tokenizer, tasks, config.final_eval.batch_size,
        {"vqa": score})
    preds, items = evaluator.predictions(params, "vqa"), evaluator.items("vqa")
    got = {f"vqa/{k}": v for k, v in score("vqa", preds, items,
                                            records).items()}
    raw = captions = loop_.captions(params, images)
  if config.data.caption_positions or config.data.caption_trace:  # scored
    # without the written indices
    captions = [strip_positions(c, world.world) for c in captions]
  if questions is not None:
    for p, (i, q, a, extra) in zip(preds, items):
      said = world_setup.vqa_answer(p, q, config.data.relation_answers)
      questions.append({"record": i, "group": extra["qtype"], "question": q,
                        "answer": a, "prediction": p,
                        "correct": normalize(said) == normalize(a)})
  true = clauses = kinds = kinds_true = 0
  for k, (caption, r) in enumerate(zip(captions, images)):
    scene = scene_from_arrays(r["scene"], world.world)
    said = []
    for sentence in edit.read(caption, world.world):
      if isinstance(sentence, edit.Relations):
        for c in sentence.clauses:
          if c.bad is None:
            said.append(bool(is_true(c.relation, scene)))
    for fact in parse_clauses(caption, world.world):
      if isinstance(fact, KindCount):
        kinds += 1
        kinds_true += is_true(fact, scene)
    clauses += len(said)
    true += sum(said)
    if captions_out is not None:
      captions_out.append({"record": k, "caption": raw[k],
                           "relations": said})
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
  out["captions: stated kinds true"] = {
      "accuracy": kinds_true / max(kinds, 1), "count": kinds}
  return out


def positions(workdir: str, split: str = "validation",
              max_examples: int = 256) -> dict[str, float]:
  """Every position question (r3jax.world.vqa.position_questions: "the red
  circle ?" -> "zero two") of the split's first images, asked once per
  object (its shortest description): the share answered with the right
  column and row, the right column, the right row (chance 1/3 each)."""
  import jax  # noqa: PLC0415

  from r3jax.eval import evaluator as evaluator_lib  # noqa: PLC0415
  from r3jax.world import scene_from_arrays  # noqa: PLC0415
  from r3jax.world.vqa import position_questions  # noqa: PLC0415
  from r3jax.train import checkpoint as ckpt_lib  # noqa: PLC0415
  from r3jax.run import loop  # noqa: PLC0415

  config = competence.eval_config(workdir, split, max_examples)
  mesh, world, setup, _ = loop.build(config)
  params = ckpt_lib.load_params(workdir, setup.abstract["params"])
  records = []
  for r in world.records(split, max_examples):
    scene = scene_from_arrays(r["scene"], world.world)
    first = {}
    for q, a in position_questions(scene, world.world):
      first.setdefault(a, (q, a))  # one description per object
    if first:
      qs, ans = zip(*first.values())
      records.append({**r, "vqa_questions": list(qs),
                      "vqa_answers": list(ans),
                      "vqa_types": ["position"] * len(qs)})
  with jax.set_mesh(mesh):
    evaluator = evaluator_lib.Evaluator(
        setup, records, world.tokenizer, {"vqa": config.tasks.vqa},
        config.final_eval.batch_size, {"vqa": evaluator_lib.score_vqa})
    preds, items = evaluator.predictions(params, "vqa"), evaluator.items("vqa")
  hits = {"both": [], "column": [], "row": []}
  for p, (_, _, a, _) in zip(preds, items):
    got, want = p.split(), a.split()
    hits["both"].append(got == want)
    hits["column"].append(got[:1] == want[:1])
    hits["row"].append(got[1:2] == want[1:] and len(got) == 2)
  return {**{k: sum(v) / len(v) for k, v in hits.items()},
          "count": len(items)}


def compare(a: str, b: str, form: str = "canonical") -> dict[str, float]:
  """Two --out files of the same split and images, paired question by
  question over the relation questions asked in `form` ("canonical" or "as
  drawn"): r3jax.analysis.study.mcnemar of a against b, and each one's
  exact binomial p against chance (1/2) and against answering "yes"
  always."""
  from r3jax.analysis import study  # noqa: PLC0415
  rows = []
  for path in (a, b):
    with open(path) as f:
      saved = json.load(f)
    rows.append({(r["record"], r["group"], r["question"]): r
                 for r in saved.get("questions", [])
                 if r["group"].startswith(form + ":")})
  if not rows[0] or rows[0].keys() != rows[1].keys():
    raise ValueError(f"{a} and {b} do not hold the same {form!r} questions "
                     "(run both with --out on the same split and images)")
  keys = sorted(rows[0])
  hits = [[rows[k][key]["correct"] for key in keys] for k in (0, 1)]
  yes = sum(rows[0][key]["answer"] == "yes" for key in keys) / len(keys)
  out = study.mcnemar(*hits)
  for name, h in zip(("a", "b"), hits):
    out[f"{name}_p_chance"] = study.binomial(sum(h), len(h), 0.5)
    out[f"{name}_p_yes"] = study.binomial(sum(h), len(h), yes)
  out["always_yes"] = yes
  return out


def compare_captions(a: str, b: str) -> dict[str, float]:
  """Two --out files of the same split and images, paired image by image
  over the images whose captions both state a relation clause: whether
  every relation clause a caption states is true (mcnemar of a against
  b)."""
  from r3jax.analysis import study  # noqa: PLC0415
  rows = []
  for path in (a, b):
    with open(path) as f:
      saved = json.load(f)
    rows.append({r["record"]: r["relations"] for r in saved["captions"]})
  if rows[0].keys() != rows[1].keys():
    raise ValueError(f"{a} and {b} do not hold captions of the same images")
  keys = sorted(k for k in rows[0] if rows[0][k] and rows[1][k])
  return study.mcnemar(*([all(r[k]) for k in keys] for r in rows))


def caption_traces(path: str, workdir: str) -> dict[str, float]:
  """For the relation phrases of the captions a --out file keeps, written
  by a run with data.caption_trace: the share whose subject's and object's
  written grid indices are right, of both, the share whose relation words
  order the two written indices as they say (r3jax.world.vqa), the share
  that is true (both objects in the scene and ordered as said), and the
  share true with both indices right."""
  from r3jax.run import loop  # noqa: PLC0415
  from r3jax.world import scene_from_arrays  # noqa: PLC0415
  from r3jax.world.config import NUMBERS  # noqa: PLC0415
  from r3jax.world.vqa import _predicates, _trace  # noqa: PLC0415
  with open(path) as f:
    saved = json.load(f)
  config = competence.eval_config(workdir, saved["split"],
                                  saved["max_examples"])
  _, world, _, _ = loop.build(config)
  cfg = world.world
  records = world.records(saved["split"], saved["max_examples"])
  n = subject = obj = both = follows = true = true_both = 0
  for row in saved["captions"]:
    scene = scene_from_arrays(records[row["record"]]["scene"], cfg)
    words = row["caption"].split()
    for i, a, b, rel, swap in _predicates(words, cfg):
      n += 1
      want, got = _trace(a, b, rel, scene, cfg), words[max(i - 2, 0):i]
      if want is not None:
        subject += got[:1] == want[:1]
        obj += got[1:] == want[1:]
        both += got == want
        x, y = (NUMBERS.index(w) for w in want)  # distinct cells: the truth
        said = (x > y) if swap else (x < y)
        true += said
        true_both += said and got == want
      if len(got) == 2 and all(w in NUMBERS for w in got):
        x, y = (NUMBERS.index(w) for w in got)
        follows += (x > y) if swap else (x < y)
  return {"phrases": n, "subject": subject / max(n, 1),
          "object": obj / max(n, 1), "both": both / max(n, 1),
          "follows": follows / max(n, 1), "true": true / max(n, 1),
          "true_and_both": true_both / max(n, 1)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("workdir", nargs="?")
  p.add_argument("--split", default="validation")
  p.add_argument("--max-examples", type=int, default=256)
  p.add_argument("--out", default="")
  p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                 help="pair two --out files question by question instead")
  p.add_argument("--compare-captions", nargs=2, metavar=("A.json", "B.json"),
                 help="pair two --out files' captions image by image: all "
                 "relation clauses true")
  p.add_argument("--caption-traces", metavar="OUT.json",
                 help="with WORKDIR: the written indices of the relation "
                 "phrases of the captions an --out file keeps")
  p.add_argument("--form", default="canonical",
                 choices=("canonical", "as drawn"))
  p.add_argument("--positions", action="store_true",
                 help="ask each object's position question instead "
                 "(data.position_questions)")
  args = p.parse_args(argv)
  if args.positions:
    got = positions(args.workdir, args.split, args.max_examples)
    print(f"position questions: {got['count']}; column and row "
          f"{got['both']:.3f}, column {got['column']:.3f}, row "
          f"{got['row']:.3f}")
    if args.out:
      with open(args.out, "w") as f:
        json.dump({"workdir": args.workdir, "split": args.split,
                   "max_examples": args.max_examples, "positions": got}, f,
                  indent=1)
    return 0
  if args.compare:
    got = compare(*args.compare, form=args.form)
    print(f"{args.form} relation questions: {got['n']}; a {got['a']:.3f} "
          f"(p {got['a_p_chance']:.2g} vs 1/2, {got['a_p_yes']:.2g} vs "
          f"always yes {got['always_yes']:.3f}), b {got['b']:.3f} (p "
          f"{got['b_p_chance']:.2g}, {got['b_p_yes']:.2g}); a - b "
          f"{got['diff']:+.3f}, only a right {got['only_a']}, only b right "
          f"{got['only_b']}, exact McNemar p {got['p']:.2g}")
    return 0
  if args.compare_captions:
    got = compare_captions(*args.compare_captions)
    print(f"images whose captions both state a relation: {got['n']}; every "
          f"clause true: a {got['a']:.3f}, b {got['b']:.3f}, a - b "
          f"{got['diff']:+.3f}, only a {got['only_a']}, only b "
          f"{got['only_b']}, exact McNemar p {got['p']:.2g}")
    return 0
  if args.caption_traces:
    got = caption_traces(args.caption_traces, args.workdir)
    print(f"caption relation phrases: {got['phrases']}; written index right:"
          f" subject {got['subject']:.3f}, object {got['object']:.3f}, both "
          f"{got['both']:.3f}; relation words ordering the written indices "
          f"as they say: {got['follows']:.3f}; true {got['true']:.3f}, true "
          f"with both indices right {got['true_and_both']:.3f}")
    if args.out:
      with open(args.out, "w") as f:
        json.dump({"file": args.caption_traces, "workdir": args.workdir,
                   **got}, f, indent=1)
    return 0
  if not args.workdir:
    p.error("a workdir, or --compare A.json B.json")
  questions, captions = [], []
  out = breakdown(args.workdir, args.split, args.max_examples, questions,
                  captions)
  for name, v in out.items():
    trace = "".join(f"  {k} {v[k]:.3f}" for k in sorted(v) if "trace" in k)
    print(f"{name:32s} {v['accuracy']:.3f}  ({int(v['count'])}){trace}")
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      json.dump({"workdir": args.workdir, "split": args.split,
                 "max_examples": args.max_examples, "groups": out,
                 "questions": questions, "captions": captions}, f,
                indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
