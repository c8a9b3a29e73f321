"""R3-RL: stage-wise Tree-RL with GRPO, as in the R3 code, for captions.

mode "tree" alternates two kinds of step (config.rl):
  even steps (root)    `groups` training images, `group_size` sampled drafts
                       each (<caption> <sep> DRAFT <eos>); reward f (1 + V);
                       every draft goes into the rollout buffer
  odd steps (branch)   each group draws one buffered draft (one with V = 1 with
                       probability `perfect_ratio`, else one with V < 1; the
                       other pool when one is empty) and samples `group_size`
                       reflect + refine rollouts from it
                       (<reflect> DRAFT <sep> REFLECTION [<sep> REFINED] <eos>);
                       reward f (1 + D) (r3jax.r3.rewards) for the
                       reflection's tokens; the refined caption's tokens are
                       a stream of their own, as in the reference code:
                       advantage V_new - the group's mean V_new (a stop counts
                       with V_prev and trains no refine tokens), no format
                       reward or stop bonus, normalised over their own tokens
                       and weighted rl.refine_weight; train_reflection=False
                       trains only the refined caption
mode "chain" (ablation): every step samples drafts and one reflect + refine
rollout per draft, and both sequences of a trajectory share one outcome
reward f f' (1 + V_final).
Advantages are reward - group mean; the loss is r3jax.r3.grpo's (PPO clip,
k3 KL to the frozen starting policy); one optimizer update per rollout batch.
Sampling: temperature, top_k and top_p (the reference: 0.9, top-p 0.9).
rl.freeze keeps top-level parameter trees fixed (the reference freezes the
vision encoder: ("encoder",)). rl.supervised_weight > 0 adds the supervised
VQA / ITA loss on fresh batches of those tasks to every step (not in the
reference, which trains RL alone). rl.agreement > 0 adds that weight times
the caption's VQA agreement (r3jax.r3.grounded.agreement, the model's own
answers to questions about the facts the caption states; not in the
reference) to the root reward and to the branch rewards of the reflection
and of the refined caption (the agreement of the caption the rollout
leaves); it is logged (rl/agreement).
With VQA / ITA in config.tasks and rl.interference on, every step also logs
interf/cos/rl:<task>, the cosine between the RL gradient and that task's
supervised gradient on a fresh batch (its data position is not checkpointed:
a resumed run draws other understanding batches, which changes only these
measurements). Sampling and the update are jitted and sharded over the mesh like training;
scoring runs the exact verifier on the host. The buffer lives for one root +
branch pair, and checkpoints are written after branch steps only, so a resumed
run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from r3jax import sharding
from r3jax.data import pipeline
from r3jax.data import tasks as tasks_lib
from r3jax.model import decoding
from r3jax.r3 import grounded, grpo
from r3jax.r3 import rewards as rewards_lib
from r3jax.train import losses as losses_lib
from r3jax.train import step as step_lib
from r3jax.world.scene import scene_from_arrays


@dataclasses.dataclass
class Rollout:
  """One stored draft of a root step."""
  record: int
  draft: str
  v: float



class TreeRL:
  """Sampling, scoring and the GRPO update for one run."""

  def __init__(self, config: ml_collections.ConfigDict, world, setup,
               schedule):
    self.cfg, self.rl, self.world, self.setup = config, config.rl, world, setup
    self.tok = world.tokenizer
    self.source = world.train_source
    self.shard = sharding.batch_sharding(setup.mesh)
    self.cap_len = config.tasks.caption.max_len
    self.r3_len = config.tasks.refine.max_len
    self._samplers: dict = {}
    top = set(setup.abstract["params"])
    if not set(config.rl.freeze) <= top:
      raise ValueError(f"config.rl.freeze={tuple(config.rl.freeze)} names "
                       f"parameters the model does not have; its top-level "
                       f"trees are {sorted(top)}")
    self._update = self._make_update(schedule)
    self._answer = jax.jit(lambda p, images, tokens, at: jnp.take_along_axis(
        setup.model(p)(images, tokens), at[:, None, None], axis=1)[:, 0])
    self.buffer: list[Rollout] = []
    # Understanding batches for the RL-vs-VQA/ITA gradient cosines.
    sup = {k: t for k, t in config.tasks.items() if k in ("vqa", "ita")}
    self.sup = None
    if sup and (config.rl.interference or config.rl.supervised_weight > 0):
      self.sup = pipeline.TrainData(
          self.source, self.tok, sup, config.seed, setup.mesh,
          config.data.read_threads, config.data.prefetch, "split",
          world.task_context())

  # --- sampling ------------------------------------------------------------

  def _sampler(self, max_len: int, prefill: int):
    key = (max_len, prefill)
    if key not in self._samplers:
      self._samplers[key] = decoding.make_generate_fn(
          self.setup.graphdef, max_len=max_len, eos_id=self.tok.eos_id,
          pad_id=self.tok.pad_id, prefill_len=prefill,
          temperature=self.rl.temperature, top_k=self.rl.top_k,
          top_p=self.rl.top_p)
    return self._samplers[key]

  def _sample(self, params, images, prompts: list[list[int]], max_len: int,
              rng) -> list[tuple[list[int], bool]]:
    """(generated ids without eos, ended with eos) for each prompt."""
    lens = np.array([len(p) for p in prompts], np.int32)
    buf = np.full((len(prompts), int(lens.max())), self.tok.pad_id, np.int32)
    for i, p in enumerate(prompts):
      buf[i, :len(p)] = p
    fn = self._sampler(max_len, int(lens.min()))
    gen = fn(params, self._put(images), self._put(buf),
             self._put(lens), rng)
    tokens = multihost_utils.process_allgather(gen.tokens, tiled=True)
    out = []
    for i in range(len(prompts)):
      ids = tokens[i, lens[i]:].tolist()
      done = self.tok.eos_id in ids
      ids = ids[:ids.index(self.tok.eos_id)] if done else ids
      out.append(([t for t in ids if t != self.tok.pad_id], done))
    return out

  def _sequences(self, prompts, outs, train_from, max_len, train_to=None):
    """Training arrays: prompt + generated (+ eos); loss on the generated
    tokens [train_from[i], train_to[i]) (default: to the end, eos included
    unless rl.train_eos is False)."""
    n = len(prompts)
    tokens = np.full((n, max_len), self.tok.pad_id, np.int32)
    targets = np.full((n, max_len), self.tok.pad_id, np.int32)
    mask = np.zeros((n, max_len), np.float32)
    for i, (p, (ids, done)) in enumerate(zip(prompts, outs)):
      full = list(p) + list(ids) + ([self.tok.eos_id] if done else [])
      full = full[:max_len + 1]
      k = len(full) - 1
      tokens[i, :k], targets[i, :k] = full[:-1], full[1:]
      start = len(p) - 1 + train_from[i]
      end = k if train_to is None or train_to[i] is None else min(
          k, len(p) - 1 + train_to[i])
      mask[i, start:end] = 1.0
    if not self.rl.train_eos:  # eos is only ever a generated text's end
      mask[targets == self.tok.eos_id] = 0.0
    return {"tokens": tokens, "targets": targets, "loss_mask": mask}

  def _images(self, rows: Sequence[int]) -> np.ndarray:
    return np.stack([self.source[i]["image"] for i in rows]).astype(np.uint8)

  def _scene(self, row: int):
    return scene_from_arrays(self.source[row]["scene"], self.world.world)

  def agreement(self, params, rows: Sequence[int], captions: Sequence[str]
                 ) -> np.ndarray:
    """grounded.agreement of each caption about image `rows[i]`; the VQA
    answers are greedy logits of the current parameters, computed in
    batches padded to a multiple of 64 rows (few compiled shapes)."""
    vqa_len = self.cfg.tasks.vqa.max_len if "vqa" in self.cfg.tasks else 20

    def answer_fn(which: Sequence[int], questions: Sequence[str]):
      n = len(questions)
      pad = -n % 64
      tokens = np.full((n + pad, vqa_len), self.tok.pad_id, np.int32)
      at = np.zeros(n + pad, np.int32)
      for i, q in enumerate(questions):
        ids = tasks_lib.prompt_ids(self.tok, "vqa", q)[:vqa_len]
        tokens[i, :len(ids)], at[i] = ids, len(ids) - 1
      images = self._images([rows[w] for w in which] + [rows[0]] * pad)
      out = self._answer(params, self._put(images),
                         self._put(tokens), self._put(at))
      return multihost_utils.process_allgather(out, tiled=True)[:n]

    return grounded.agreement(answer_fn, self.tok, captions, self.world.world,
                              [self._scene(r) for r in rows])

  # --- the two stages ------------------------------------------------------

  def _groups(self, step: int) -> list[int]:
    rng = np.random.default_rng([self.cfg.seed, step])
    return [int(i) for i in rng.choice(len(self.source), self.rl.groups,
                                       replace=False)]

  def root(self, params, step: int, rng, agreement: bool = True):
    g = self.rl.group_size
    rows = [r for r in self._groups(step) for _ in range(g)]
    prompt = tasks_lib.prompt_ids(self.tok, "caption", None)
    images = self._images(rows)
    outs = self._sample(params, images, [prompt] * len(rows), self.cap_len, rng)
    rewards, vs, drafts = [], [], []
    for row, (ids, _) in zip(rows, outs):
      draft = self.tok.decode(ids)
      r, v = rewards_lib.root_reward(draft, self._scene(row), self.world.world,
                                     self.rl.reward)
      rewards.append(r)
      vs.append(v)
      drafts.append(draft)
      self.buffer.append(Rollout(row, draft, v))
    formatted = np.mean([r > 0 for r in rewards])  # the verifier's f
    agree = None
    if self.rl.agreement and agreement:
      agree = self.agreement(params, rows, drafts)
      rewards = list(np.asarray(rewards) + self.rl.agreement * agree)
    batch = self._sequences([prompt] * len(rows), outs, [0] * len(rows),
                            self.cap_len)
    batch["image"] = images
    batch["advantage"] = rewards_lib.advantages(rewards, g)
    m = {"rl/reward": np.mean(rewards), "rl/v": np.mean(vs),
         "rl/format": formatted, "rl/stage": 0.0}
    if agree is not None:
      m["rl/agreement"] = np.mean(agree)
    return {"root": batch}, m

  def _draw(self, rng: np.random.Generator) -> Rollout:
    perfect = [r for r in self.buffer if r.v == 1.0]
    flawed = [r for r in self.buffer if r.v < 1.0]
    pool = perfect if (rng.random() < self.rl.perfect_ratio and perfect) or (
        not flawed) else flawed
    return pool[rng.integers(len(pool))]

  def _put(self, x: np.ndarray) -> jax.Array:
    return sharding.put(x, self.shard)

  def branch(self, params, step: int, rng, drafts: Sequence[Rollout] | None = None,
             per_draft: int | None = None, refine_stream: bool = True):
    """Reflect + refine rollouts: `per_draft` of each draft (default: one
    buffered draft per group, group_size rollouts each). With
    `refine_stream`, the refined captions' tokens get their own mask and
    advantage (refine_mask, refine_advantage); else one mask covers both."""
    tok, cfg = self.tok, self.world.world
    if drafts is None:
      pick = np.random.default_rng([self.cfg.seed, step, 1])
      drafts = [self._draw(pick) for _ in range(self.rl.groups)]
    k = per_draft or self.rl.group_size
    items = [d for d in drafts for _ in range(k)]
    prompts = [[tok.task_id("reflect")] + tok.encode(d.draft) + [tok.sep_id]
               for d in items]
    images = self._images([d.record for d in items])
    outs = self._sample(params, images, prompts, self.r3_len, rng)
    info = {k: [] for k in ("reward", "v", "stop", "format", "final",
                            "from", "to", "cut")}
    for d, (ids, _) in zip(items, outs):
      if tok.sep_id in ids:
        cut = ids.index(tok.sep_id)
        reflection, refined = tok.decode(ids[:cut]), tok.decode(ids[cut + 1:])
      else:
        cut, reflection, refined = len(ids), tok.decode(ids), None
      r, v, stopped = rewards_lib.branch_reward(
          d.v, reflection, refined, self._scene(d.record), cfg,
          self.rl.reward, d.draft)
      info["reward"].append(r)
      info["v"].append(v)
      info["stop"].append(stopped)
      info["format"].append(rewards_lib.read_branch(reflection, refined)[0])
      info["final"].append(rewards_lib.final_caption(d.draft, refined, stopped))
      # A stop trains no refine tokens; the ablation trains no reflection.
      info["from"].append(0 if self.rl.train_reflection else cut + 1)
      info["to"].append(cut + 1 if stopped else None)
      info["cut"].append(cut)
    if self.rl.agreement:
      agree = self.agreement(params, [d.record for d in items], info["final"])
      info["reward"] = list(np.asarray(info["reward"]) +
                            self.rl.agreement * agree)
      info["agreement"] = list(agree)
    reflection_to = info["to"]
    if refine_stream:  # the reflection stream ends at its <sep>
      reflection_to = [c + 1 for c in info["cut"]]
    batch = self._sequences(prompts, outs, info["from"], self.r3_len,
                            reflection_to)
    batch["image"] = images
    batch["advantage"] = rewards_lib.advantages(info["reward"], k)
    m = {"rl/reward": np.mean(info["reward"]), "rl/v": np.mean(info["v"]),
         "rl/v_prev": np.mean([d.v for d in items]),
         "rl/stop_rate": np.mean(info["stop"]),
         "rl/format": np.mean(info["format"]), "rl/stage": 1.0}
    if "agreement" in info:
      m["rl/agreement"] = np.mean(info["agreement"])
    if refine_stream:
      refine = self._sequences(prompts, outs, [c + 1 for c in info["cut"]],
                               self.r3_len)
      batch["refine_mask"] = refine["loss_mask"]
      edited = 1.0 - np.asarray(info["stop"], np.float32)
      refine_reward = np.asarray(info["v"], np.float64)
      if "agreement" in info:  # the refined caption's own agreement
        refine_reward = refine_reward + self.rl.agreement * np.asarray(
            info["agreement"])
      batch["refine_advantage"] = rewards_lib.advantages(
          refine_reward, k) * edited
      m["rl/refine_reward"] = np.mean(info["v"])
    return {"branch": batch}, m, info

  def chain(self, params, step: int, rng):
    """The ablation: drafts and one reflect + refine each, one outcome."""
    root_batch, _ = self.root(params, step, jax.random.fold_in(rng, 0),
                              agreement=False)  # the outcome's instead
    drafts, self.buffer = self.buffer, []
    branch_batch, m_b, info = self.branch(
        params, step, jax.random.fold_in(rng, 1), drafts, per_draft=1,
        refine_stream=False)
    world, kind = self.world.world, self.rl.reward
    outcome = []
    for d, ok, final in zip(drafts, info["format"], info["final"]):
      scene = self._scene(d.record)
      f_root = rewards_lib.root_reward(d.draft, scene, world, kind)[0] > 0
      v_final = rewards_lib.score(final, scene, world, kind)
      outcome.append(float(f_root and ok) * (1.0 + v_final))
    if "agreement" in info:  # the final caption's (branch computed it)
      outcome = list(np.asarray(outcome) +
                     self.rl.agreement * np.asarray(info["agreement"]))
    adv = rewards_lib.advantages(outcome, self.rl.group_size)
    root_batch["root"]["advantage"] = adv
    branch_batch["branch"]["advantage"] = adv
    m = {"rl/reward": np.mean(outcome), "rl/v": m_b["rl/v"],
         "rl/stop_rate": m_b["rl/stop_rate"], "rl/stage": 2.0}
    if "agreement" in info:
      m["rl/agreement"] = m_b["rl/agreement"]
    return {**root_batch, **branch_batch}, m

  # --- the update ----------------------------------------------------------

  def _make_update(self, schedule):
    """update(state, batch, ref_params, sup): the GRPO direction through
    r3jax.train.step.make_update, with config.rl.freeze's groups frozen."""
    setup, rl = self.setup, self.rl

    def direction(state, batch, ref_params, sup) -> step_lib.Direction:
      def loss_fn(params):
        parts, refine = [], []
        for b in batch.values():
          logits = setup.model(params)(b["image"], b["tokens"])
          logp = grpo.token_logp(logits, b["targets"])
          ref = jax.lax.stop_gradient(grpo.token_logp(setup.model(
              ref_params)(b["image"], b["tokens"]), b["targets"]))
          b = dict(b, old_logp=jax.lax.stop_gradient(logp))
          parts.append(grpo.sums(logp, ref, b, clip=rl.clip))
          if "refine_mask" in b:
            refine.append(grpo.sums(logp, ref, dict(
                b, loss_mask=b["refine_mask"],
                advantage=b["refine_advantage"]), clip=rl.clip))
        streams = {"refine": (rl.refine_weight, refine)} if refine else None
        return grpo.loss(parts, kl_weight=rl.kl, streams=streams)

      (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state["params"])
      # Interference under R3: the RL gradient against the understanding
      # tasks' supervised gradients (r3jax.interference's cosine); with
      # rl.supervised_weight, those gradients also join the update.
      total = grads
      for name, b in sup.items():
        xent, g = jax.value_and_grad(lambda p, b=b, t=name: (
            losses_lib.token_xent(setup.model(p)(b["image"], b["tokens"]),
                                  b, t)[0]))(state["params"])
        dot = sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(grads),
                                                 jax.tree.leaves(g)))
        m[f"interf/cos/rl:{name}"] = dot / jnp.maximum(
            optax.tree.norm(grads) * optax.tree.norm(g), 1e-30)
        if rl.supervised_weight > 0:
          m[f"loss/{name}"] = xent
          loss = loss + rl.supervised_weight * xent
          total = jax.tree.map(lambda a, c: a + rl.supervised_weight * c,
                               total, g)
      return step_lib.Direction(total, loss, m)

    return step_lib.make_update(setup, direction, schedule,
                                nonfinite=self.cfg.nonfinite,
                                frozen=tuple(rl.freeze))

  def step(self, state, ref_params, step: int):
    """One root, branch or chain step at `step` -> (state, measurements)."""
    rng = jax.random.fold_in(jax.random.key(self.cfg.seed), step)
    if self.rl.mode == "chain":
      batch, m = self.chain(state["params"], step, rng)
    elif step % 2 == 0:
      self.buffer = []
      batch, m = self.root(state["params"], step, rng)
    else:
      batch, m, _ = self.branch(state["params"], step, rng)
      self.buffer = []
    batch = {k: {f: self._put(np.asarray(v)) for f, v in b.items()}
             for k, b in batch.items()}
    sup = next(self.sup) if self.sup is not None else {}
    with jax.set_mesh(self.setup.mesh):
      state, dm = self._update(state, batch, ref_params, sup)
    m.update(jax.device_get(dm))
    return state, {k: float(v) for k, v in m.items()}
