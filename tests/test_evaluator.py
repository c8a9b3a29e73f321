"""Evaluation: padded, sharded batches give the per-item greedy decodes."""

import jax
import numpy as np

from r3jax.data import tasks
from r3jax.eval import evaluator as evaluator_lib
from r3jax.model import make_generate_fn
from r3jax.run import loop, world_setup


def test_sharded_padded_predictions_equal_one_by_one(tiny):
  c = tiny(data=8)
  mesh, world, setup, init = loop.build(c)
  state = init()
  # A random, non-zero head so that decodes differ between items.
  params = jax.device_get(state["params"])
  rng = np.random.default_rng(0)
  head = params["decoder"]["head"]["kernel"]
  params["decoder"]["head"]["kernel"] = rng.normal(size=head.shape).astype(
      np.float32)
  records = world.records("validation", 5)  # 5 captions, 30 VQA: both padded
  ev = evaluator_lib.Evaluator(setup, records, world.tokenizer, c.tasks, 8, {})
  for task in ("caption", "vqa"):
    one_by_one = make_generate_fn(
        setup.graphdef, max_len=c.tasks[task].max_len,
        eos_id=world.tokenizer.eos_id, pad_id=world.tokenizer.pad_id,
        prefill_len=1)
    with jax.set_mesh(mesh):
      got = ev.predictions(jax.device_put(params), task)
    items = [(i, *it) for i, r in enumerate(records)
             for it in tasks.TASKS[task].eval_items(r)]
    assert len(got) == len(items)
    for text, (i, q, _, _) in list(zip(got, items))[::3]:
      prompt, n = tasks.format_prompt(world.tokenizer, task, q,
                                      c.tasks[task].max_len)
      out = one_by_one(params, records[i]["image"][None], prompt[None],
                       np.array([n]))
      assert text == world.tokenizer.decode(np.asarray(out.tokens[0, n:]).tolist())
    assert len(set(got)) > 1


def test_caption_scorer_on_references_is_perfect(tiny):
  world = world_setup.load(tiny())
  records = world.records("validation", 8)
  items = [(i, None, r["captions"], {}) for i, r in enumerate(records)]
  score = world_setup.make_caption_scorer(world.world)
  perfect = score("caption", [r["captions"][0] for r in records], items, records)
  assert perfect["f1"] == perfect["v_strict"] == perfect["precision"] == 1.0
  assert perfect["bleu4"] == 1.0  # each hypothesis is one of its references
  # Swap captions between images: the verifier must notice.
  shifted = [records[(i + 1) % 8]["captions"][0] for i in range(8)]
  wrong = score("caption", shifted, items, records)
  assert wrong["v_strict"] < 0.5 and wrong["hallucination"] > 0.2
