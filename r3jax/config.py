"""The one place where every run setting has its default, and the checks on it.

Experiment files in configs/ start from `defaults()` and change what they need;
`validate` rejects keys the defaults do not have (typos), so a run is a function
of its config and nothing else.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from r3jax import config_checks as checks
from r3jax.data import pipeline
from r3jax.data import tasks as tasks_lib
from r3jax.interference import groups as interference_groups
from r3jax.model import ModelConfig
from r3jax.train import nonfinite as nonfinite_lib
from r3jax.r3 import variants as r3_variants
from r3jax.world.config import NUMBERS
from r3jax.world.corrupt import CORRUPTIONS


def task_defaults(batch_size: int, max_len: int, weight: float = 1.0):
  return ml_collections.ConfigDict(dict(
      batch_size=batch_size,  # per-task examples in every global batch
      max_len=max_len,        # decoder tokens for this task (prompt + target)
      weight=weight,          # loss weight; each task loss is a token mean
      # Examples drawn from each image (split layout): batch_size / per_image
      # images are encoded once each, so more questions per step cost
      # decoder tokens only.
      per_image=1,
      # Draw weights of a record's items by type, e.g. {"relation": 4.0}
      # (VQA on the world: its question types; a type not named weighs 1);
      # {}: every item alike.
      type_weights={},
  ))


def _ground_defaults() -> ml_collections.ConfigDict:
  t = task_defaults(56, 40)  # 8 images
  t.per_image = 7
  return t


def all_tasks() -> dict[str, ml_collections.ConfigDict]:
  """Every task's defaults; `defaults()` trains caption + VQA + ITA and
  `select_tasks` picks any of these."""
  added = {name: task_defaults(*t.defaults) for name, t in
           tasks_lib.TASKS.items() if t.defaults is not None}
  return dict(
      **added,
      caption=task_defaults(32, 40),
      vqa=task_defaults(32, 20),
      ita=task_defaults(16, 44),
      reflect=task_defaults(16, 96),
      refine=task_defaults(16, 144),
      refine_direct=task_defaults(16, 80),
      # The grounded consistency loss (r3jax.r3.grounded): per image, its
      # caption and per_image - 1 VQA questions about the caption's facts.
      ground=_ground_defaults(),
  )


def defaults() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # The embedded world (r3jax.world.WorldConfig fields).
  c.world = dict(image_size=64, min_objects=1, max_objects=3,
                 shapes=("circle", "square", "triangle"),
                 colors=("red", "green", "blue", "yellow"),
                 sizes=("small", "large"), grid=0,  # 0: max(3, max_objects)
                 relation_axes=("horizontal",), radius=0.34, jitter=0.08,
                 n_captions=5, n_questions=6, n_ita=4,
                 number_words=0)  # 0: max_objects
  c.data = dict(
      dir=os.environ.get("R3JAX_DATA_DIR", "data"),
      seed=0,
      split_sizes=dict(train=20_000, validation=500, test=1_000),
      read_threads=2,
      prefetch=4,
      # "split": each task draws its own images; "shared": every task's
      # sub-batch holds the same images (all task batch sizes equal).
      layout="split",
      # World VQA relation questions as drawn ("as_drawn": "left of", "to
      # the left of", "right of", "to the right of"), or each rewritten at
      # training time to the one phrasing with the same answer ("canonical":
      # "is B left of A ?" for "is A right of B ?"); evaluation asks them as
      # drawn.
      relation_questions="as_drawn",
      # World VQA relation answers as one word ("word": "yes"), or trained
      # after the two named objects' grid indices on the question's axis
      # ("trace": "zero two yes", columns for left/right, rows for
      # above/below, r3jax.world.vqa.relation_trace), or each index after
      # its object's description, copied from the question ("restate": "the
      # circle zero the square two yes"): the model reads each position
      # into a word of its own before it compares them. Evaluation then
      # scores a relation answer by its last word, and the rest as
      # vqa/trace/accuracy (config.tasks.vqa.max_len must hold it).
      relation_answers="word",
      # The share of world VQA training draws replaced by a position
      # question about one of the image's objects: "the small red circle ?"
      # -> its grid column and row ("zero two"); what relation_answers'
      # indices need, asked about one object at a time.
      position_questions=0.0,
      # World captions trained with each single object of the listing
      # followed by its grid column and row, as position questions answer
      # them ("a small red circle zero one"), so that a relation clause
      # compares two positions already written. Evaluation removes them
      # before scoring (r3jax.world.vqa.strip_positions) and logs
      # caption/positions/accuracy; config.tasks.caption.max_len must hold
      # up to 6 more words.
      caption_positions=False,
      # World captions trained with the grid indices of each relation's
      # two objects on its axis written just before its relation words:
      # "the square is two zero right of the circle". The relation words
      # then follow from two written indices, as relation_answers="trace"
      # answers do. Evaluation removes them as it does caption_positions
      # and logs caption/trace/accuracy; config.tasks.caption.max_len must
      # hold 2 more words per relation (8 more with caption_positions: up
      # to 56 tokens in the default world).
      caption_trace=False,
      # "world": the embedded synthetic world. "coco_vqa": COCO Captions
      # (caption and ITA tasks) and VQAv2 (vqa task) built from the official
      # files in manual_dir (r3jax/run/real_setup.py), at
      # config.world.image_size, with a SentencePiece vocabulary of
      # vocab_size trained on their training text.
      source="world",
      manual_dir="",
      coco_year=2014,
      karpathy=False,         # COCO's Karpathy train / val / test split
      max_per_split=0,        # >0: only the first N images / questions
      image_fit="crop",       # "crop" (centre square) or "squash"
      vocab_size=8000,
  )

  c.tasks = ml_collections.ConfigDict(
      {k: v for k, v in all_tasks().items() if k in ("caption", "vqa", "ita")})

  # R3 training sequences (r3jax/r3/data.py) and the consistency loss
  # (r3jax/r3/consistency.py); used by the reflect / refine tasks.
  c.r3 = dict(
      # What a round of the loop runs (r3jax.r3.variants): "" picks it from
      # the R3 tasks trained ("direct" with refine_direct and no reflect,
      # else "reflect_refine"); a registered variant's name.
      variant="",
      self_questions=0,     # "Q ? A ." pairs before the instruction (variant)
      consistency=0.5,      # coefficient of the reflect/refine consistency KL
      p_stop=0.25,          # reflect drafts left correct (target: stop)
      corruptions=list(CORRUPTIONS),  # draft error kinds
      rounds=3,             # reflect -> refine rounds at inference
      lookup=0,             # prompt-lookup tokens verified per call (0: off)
      # evaluations also decode refine on the verifier's own instruction
      # (r3/refine_given_edit: the refine stage alone; one more decode)
      given_edit=True,
      onpolicy_every=0,     # refresh the model's own drafts every N steps
      onpolicy_frac=0.5,    # share of R3 examples then using them
      # refine's on-policy examples also carry the model's own reflection on
      # its draft; refine learns to carry out the edit it names
      onpolicy_reflections=False,
      # The grounded consistency loss (task "ground", r3jax.r3.grounded):
      # slots whose VQA teacher gives less than ground_min_conf to every
      # answer a caption can state are left out; ground_refined: the share
      # of its on-policy examples whose round edits that use the model's
      # refined caption (refine format: config.tasks.ground.max_len must
      # hold the refine task's) instead of its draft.
      ground_min_conf=0.0,
      ground_refined=0.0,
  )

  # R3-RL (r3jax/r3/tree_rl.py): Tree-RL with GRPO instead of supervised
  # steps when enabled; `config.optim` is the RL optimizer then.
  c.rl = dict(
      enabled=False,
      mode="tree",          # "tree" (root / branch steps) or "chain"
      groups=4,             # images (prompts) per step
      group_size=8,         # rollouts per group
      temperature=0.9, top_k=50,
      top_p=1.0,            # nucleus sampling (1: off)
      reward="v_strict",    # verifier score V: "v_strict" or "v_frac"
      perfect_ratio=0.15,   # branch drafts drawn from the V = 1 pool
      train_reflection=True,  # False: only the refined caption is trained
      # True: the generated text's end (eos) is trained with its advantage,
      # so RL also decides where a caption ends; False: as the reference
      # code, whose policy loss leaves out its end token (docs/r3.md).
      train_eos=True,
      clip=0.2, kl=0.001,   # PPO clip; k3 KL weight to the starting policy
      # Refined captions are a stream of their own (tree mode): advantage
      # V_new - group mean, normalised over their tokens, this weight.
      refine_weight=1.0,
      # The supervised VQA / ITA loss (config.tasks' batches) added to every
      # RL step with this weight (0: the reference's pure RL).
      supervised_weight=0.0,
      # Weight of the VQA agreement (r3jax.r3.grounded.agreement: the share
      # of a caption's checkable facts its own VQA answers confirm) added to
      # the root reward and to the branch reward (of the caption a rollout
      # leaves); 0: the verifier alone.
      agreement=0.0,
      freeze=(),            # top-level parameter trees kept fixed, e.g. encoder
      interference=True,    # log cos(RL gradient, VQA / ITA gradients)
  )

  c.model = dict(
      encoder="Ti",           # named ViT size: mu (tests), Ti, S, B, L
      patch_size=8,
      stem="patch",           # "patch" (linear) or "conv" (see ModelConfig)
      stem_convs=0,           # conv stem: extra residual 3x3 convolutions
      pos_init="normal",      # encoder positions start "normal" or "sincos2d"
      cross_pos="none",       # "xy": cross-attention values carry (x, y)
      # Decoder blocks from this index on start as the identity (for growing
      # a decoder from init_from; -1: none).
      dec_identity_from=-1,
      dec_alibi=False,        # ALiBi slopes (learned) in decoder self-attention
      # Early-fusion blocks: image tokens read the prompt before the decoder
      # reads them (r3jax.model.config.ModelConfig.fusion_depth).
      fusion_depth=0,
      # Changes to the named size; the default is a narrow, shallow Ti that
      # learns the default world in minutes on a laptop CPU.
      enc_overrides=dict(width=128, depth=2, heads=4, mlp=512),
      dec_width=128, dec_depth=2, dec_heads=4, dec_mlp=512,
      # Decoder positions; 0: the longest configured task's max_len. Runs
      # that pass parameters on (config.init_from) between task sets fix it.
      max_len=0,
      dtype="float32",        # compute dtype; parameters stay float32
      # Activation checkpointing per block: "none", "full", "dots",
      # "dots_saveable" or "offload" (r3jax.model.config.REMAT_POLICIES).
      remat="none",
      # Stack each part's blocks along a "layers" axis and jax.lax.scan over
      # them (compile time independent of depth; r3jax/model/scan.py).
      scan_layers=False,
      # Pretrained ViT weights for the encoder at initialisation (a local
      # big_vision .npz or Hugging Face ViT .safetensors / .bin / model dir;
      # r3jax/model/pretrained.py); the encoder size above must match it.
      encoder_init="",
      cls_token=False,        # a [CLS] image token (HF ViT, big_vision "tok")
      enc_gelu="tanh",        # encoder MLP GELU: "tanh" or "erf" (HF ViT)
      ln_custom_vjp=True,     # LayerNorm backward in closed form (faster on CPU)
      # jax.nn.dot_product_attention implementation: "auto" (cuDNN flash
      # attention on GPUs where it applies, else XLA), "xla" or "cudnn".
      attention="auto",
  )

  c.optim = dict(
      lr=2e-3, warmup_steps=50, end_lr_frac=0.01,
      b1=0.9, b2=0.98, eps=1e-8,
      weight_decay=0.05,
      no_decay=r"(bias|scale|pos_embed)$",  # regex over param paths
      clip_norm=1.0,
  )

  # Gradient interference between tasks (r3jax/interference), measured inside
  # the step, and the aggregation method that turns per-task gradients into
  # the update (methods.METHODS; "weighted_sum" is the plain objective).
  c.interference = dict(
      enabled=True,
      halves=True,          # split-half noise floor (split layout only)
      group_stats=True,     # per parameter group, not only global
      groups=[list(r) for r in interference_groups.DEFAULT_RULES],
      thresholds=[0.0, -0.02, -0.05, -0.1],
      method="weighted_sum",
      method_args={},       # the method's hyper-parameters by name
      probe_every=0,        # lookahead transference probe cadence (0: off)
  )

  # A workdir whose latest checkpoint's parameters start this run (its
  # optimizer, step and data order start fresh); "" starts from a fresh
  # initialisation. R3-RL starts from an R3-SFT run this way. A run that has
  # checkpoints of its own resumes from them instead.
  c.init_from = ""
  # With init_from: parameters the start lacks (a module this model adds,
  # such as model.cross_pos's) keep their fresh initialisation instead of
  # failing the load; every other parameter must match.
  c.init_from_partial = False

  c.total_steps = 1_500
  c.log_every_steps = 10
  c.ckpt_every_steps = 200
  c.keep_ckpts = 2
  # A step whose loss, gradient or update is non-finite: "stop" the run (the
  # last checkpoint is kept) or "skip" its update in-graph and count it
  # (r3jax/train/nonfinite.py).
  c.nonfinite = "stop"
  c.eval_every_steps = 500
  c.evals = dict(split="validation", max_examples=256, batch_size=64)
  c.final_eval = dict(split="test", max_examples=-1, batch_size=128)
  # Tasks evaluated besides the trained ones (their defaults in all_tasks()),
  # e.g. the understanding tasks of a captioning-only run.
  c.eval_tasks = []

  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sharding_rules = [
      ("act_batch", ("data", "fsdp")),
      ("embed", "fsdp"),
      ("mlp", "tensor"),
      ("heads", "tensor"),
      ("vocab", "tensor"),
      ("act_heads", "tensor"),
      ("act_mlp", "tensor"),
  ]
  c.compilation_cache_dir = os.environ.get(
      "R3JAX_COMPILATION_CACHE", os.path.expanduser("~/.cache/r3jax/jax"))
  c.progress_bar = True
  return c


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
  """Parses 'runlocal,seed=3' into typed values from the defaults in `spec`.

  A bare name sets a bool to True; unknown names are an error.
  """
  out = ml_collections.ConfigDict(dict(spec))
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    key = key.strip()
    if key not in spec:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(spec)}")
    default = spec[key]
    if not eq:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
      out[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key!r} is a bool, got {value!r}")
      out[key] = value.lower() in ("true", "1")
    else:
      out[key] = type(default)(value)
  return out


def _flat_keys(d: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping) and k not in _OPEN_DICTS:
      out.update(_flat_keys(v, key + "."))
    else:
      out[key] = v
  return out


# Sub-dicts whose keys are data, not schema.
_OPEN_DICTS = ("enc_overrides", "tasks", "split_sizes", "method_args",
               "type_weights")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first problem found in `config`."""
  ref = _flat_keys(defaults().to_dict())
  got = _flat_keys(config.to_dict())
  checks.check_keys(got, ref)
  checks.check_types(got, ref, task_defaults(1, 1))

  if not config.tasks:
    raise ValueError("config.tasks is empty: name at least one of "
                     f"{sorted(tasks_lib.TASKS)}")
  task_keys = set(task_defaults(1, 1))
  for name, t in config.tasks.items():
    if name not in tasks_lib.TASKS:
      raise ValueError(f"unknown task {name!r} in config.tasks; known: "
                       f"{sorted(tasks_lib.TASKS)}")
    if set(t) != task_keys:
      bad = sorted(set(t) ^ task_keys)
      raise ValueError(f"config.tasks.{name} keys {bad} differ from "
                       f"{sorted(task_keys)}")
    if t.batch_size <= 0 or t.max_len < 3:
      raise ValueError(f"config.tasks.{name}: batch_size must be > 0 and "
                       f"max_len >= 3, got {t.batch_size}, {t.max_len}")
    if t.per_image < 1 or t.batch_size % t.per_image:
      raise ValueError(f"config.tasks.{name}.per_image={t.per_image} must be "
                       f">= 1 and divide batch_size={t.batch_size}")
    checks.check_type_weights(name, dict(t.type_weights),
                              tasks_lib.TASKS[name].item_types)
    grouped = tasks_lib.TASKS[name].grouped
    if grouped and t.per_image < 2:
      raise ValueError(f"config.tasks.{name}.per_image={t.per_image}: the "
                       f"{name} task's rows per image (its caption and "
                       "per_image - 1 questions) must be >= 2")
    if t.per_image > 1 and (not (tasks_lib.TASKS[name].sample or grouped) or
                            config.data.layout != "split"):
      raise ValueError(
          f"config.tasks.{name}.per_image={t.per_image}: several examples "
          "per image are drawn for the caption, VQA and ITA tasks in the "
          "'split' layout only (the 'shared' layout draws one example of "
          "each task per image)")
  for split in config.data.split_sizes:
    if split not in ("train", "validation", "test"):
      raise ValueError(f"unknown split {split!r} in config.data.split_sizes")
  if sum(v == -1 for v in config.mesh.values()) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(config.mesh)}")
  for axis, size in config.mesh.items():
    if size != -1 and size < 1:
      raise ValueError(f"config.mesh.{axis}={size}: mesh sizes are positive "
                       "or -1 (the devices the other axes leave)")
  checks.check_data(config)
  bad = [n for n in config.eval_tasks if n not in all_tasks()]
  if bad:
    raise ValueError(f"config.eval_tasks: unknown tasks {bad}; known: "
                     f"{sorted(all_tasks())}")
  checks.check_model(config, evaluated_tasks(config))
  for name in ("total_steps", "log_every_steps", "ckpt_every_steps",
               "eval_every_steps", "keep_ckpts"):
    if config[name] <= 0:
      raise ValueError(f"config.{name} must be > 0, got {config[name]}")
  if config.data.source not in ("world", "coco_vqa"):
    raise ValueError(f"config.data.source must be 'world' or 'coco_vqa', got "
                     f"{config.data.source!r}")
  if config.data.source != "world":
    if not config.data.manual_dir:
      raise ValueError(f"config.data.source={config.data.source!r} needs "
                       "config.data.manual_dir (the official files)")
    if config.rl.enabled:
      raise ValueError(f"config.data.source={config.data.source!r}: R3-RL's "
                       "rewards come from the world's verifier; on real data "
                       "it is not supported (R3-SFT is: r3jax/r3/real.py)")
  if config.init_from_partial and not config.init_from:
    raise ValueError("config.init_from_partial is set without "
                     "config.init_from")
  if config.model.encoder_init and config.init_from:
    raise ValueError("config.model.encoder_init and config.init_from are both "
                     "set; a run starts from one of them")
  if config.model.encoder_init and not os.path.exists(
      config.model.encoder_init):
    raise ValueError(f"config.model.encoder_init={config.model.encoder_init!r}"
                     " does not exist")
  if config.model.attention == "cudnn":
    import jax  # noqa: PLC0415 (jax reads XLA_FLAGS when first imported)
    if jax.default_backend() != "gpu":
      raise ValueError("config.model.attention='cudnn' needs a GPU; this "
                       f"run's backend is {jax.default_backend()!r} (use "
                       "'auto' or 'xla')")
  if config.nonfinite not in nonfinite_lib.MODES:
    raise ValueError(f"config.nonfinite must be one of {nonfinite_lib.MODES}, "
                     f"got {config.nonfinite!r}")
  r3 = config.r3
  bad = sorted(set(r3.corruptions) - set(CORRUPTIONS))
  if bad or not r3.corruptions:
    raise ValueError(f"config.r3.corruptions: unknown {bad} or empty; known: "
                     f"{list(CORRUPTIONS)}")
  if (not 0 <= r3.p_stop <= 1 or r3.consistency < 0 or
      r3.self_questions < 0 or r3.rounds < 1 or r3.lookup < 0):
    raise ValueError("config.r3 needs 0 <= p_stop <= 1, consistency >= 0, "
                     "self_questions >= 0, rounds >= 1 and lookup >= 0, got "
                     f"{r3.to_dict()}")
  if config.data.relation_questions not in ("as_drawn", "canonical"):
    raise ValueError("config.data.relation_questions must be 'as_drawn' or "
                     f"'canonical', got {config.data.relation_questions!r}")
  answers = config.data.relation_answers
  if answers not in tasks_lib.RELATION_ANSWERS:
    raise ValueError(f"config.data.relation_answers must be one of "
                     f"{tasks_lib.RELATION_ANSWERS}, got {answers!r}")
  if answers != "word" and config.data.source != "world":
    raise ValueError(f"config.data.relation_answers={answers!r} needs the "
                     "synthetic world (config.data.source='world'), got "
                     f"{config.data.source!r}")
  writers = [k for k, on in (
      (f"relation_answers={answers!r}", answers != "word"),
      ("position_questions", config.data.position_questions),
      ("caption_positions", config.data.caption_positions),
      ("caption_trace", config.data.caption_trace)) if on]
  w = config.world
  if w.number_words and not w.max_objects <= w.number_words < len(NUMBERS):
    raise ValueError(f"config.world.number_words={w.number_words} must be 0 "
                     f"(max_objects) or in [max_objects={w.max_objects}, "
                     f"{len(NUMBERS) - 1}]")
  grid = w.grid or max(3, w.max_objects)  # WorldConfig's defaults
  numbers = w.number_words or w.max_objects
  if writers and grid > numbers + 1:
    raise ValueError(
        f"config.data.{writers[0]} writes grid indices as "
        f"number words up to {grid - 1}, but the world's vocabulary has "
        f"numbers only up to {numbers} (config.world.number_words, or "
        f"max_objects={w.max_objects}): use config.world.grid <= "
        f"{numbers + 1} or config.world.number_words >= {grid - 1}")
  if not 0 <= config.data.position_questions <= 1 or (
      config.data.position_questions and config.data.source != "world"):
    raise ValueError("config.data.position_questions must be in [0, 1] (and "
                     "0 off the synthetic world), got "
                     f"{config.data.position_questions!r}")
  for key in ("caption_positions", "caption_trace"):
    if config.data[key] and (config.data.source != "world" or
                             set(r3_variants.R3_TASKS) & set(config.tasks)):
      raise ValueError(
          f"config.data.{key} writes grid indices into world captions: it "
          "needs config.data.source='world' and no R3 task (whose drafts "
          f"would carry them), got source {config.data.source!r} and tasks "
          f"{sorted(config.tasks)}")
  if "ground" in config.tasks:
    need = {"caption": config.tasks.caption.max_len} if (
        "caption" in config.tasks) else {}
    if r3.ground_refined and "refine" in config.tasks:
      need["refine"] = config.tasks.refine.max_len
    short = {k: v for k, v in need.items()
             if config.tasks.ground.max_len < v}
    if short:
      raise ValueError(f"config.tasks.ground.max_len="
                       f"{config.tasks.ground.max_len} is shorter than the "
                       f"captions it holds: {short} (the refine format when "
                       "config.r3.ground_refined > 0)")
  if not 0 <= r3.ground_min_conf <= 1 or not 0 <= r3.ground_refined <= 1:
    raise ValueError("config.r3 needs 0 <= ground_min_conf <= 1 and 0 <= "
                     f"ground_refined <= 1, got {r3.ground_min_conf}, "
                     f"{r3.ground_refined}")
  if r3.onpolicy_every < 0 or not 0 <= r3.onpolicy_frac <= 1:
    raise ValueError("config.r3 needs onpolicy_every >= 0 and 0 <= "
                     f"onpolicy_frac <= 1, got {r3.to_dict()}")
  if r3.onpolicy_every and config.data.layout != "split":
    raise ValueError("on-policy drafts (config.r3.onpolicy_every) need "
                     "config.data.layout='split'")
  evaluated = set(evaluated_tasks(config))
  if config.r3.variant or set(r3_variants.R3_TASKS) & evaluated:
    variant = r3_variants.get(config.r3.variant, evaluated)
    missing = sorted(set(variant.tasks) - evaluated)
    if config.r3.variant and missing:
      raise ValueError(f"config.r3.variant={config.r3.variant!r} needs the "
                       f"tasks {missing} in config.tasks (or eval_tasks)")
    if config.rl.enabled and variant is not r3_variants.REFLECT_REFINE and (
        config.r3.variant):
      raise ValueError(f"config.r3.variant={config.r3.variant!r}: R3-RL "
                       "(config.rl) trains the reflect -> refine variant only")
  if {"reflect", "refine", "refine_direct"} & set(config.tasks) and (
      "caption" not in config.tasks):
    raise ValueError("the R3 tasks refine a caption the model drafts: add the "
                     "caption task to config.tasks")
  rl = config.rl
  if rl.enabled:
    if rl.mode not in ("tree", "chain") or rl.reward not in ("v_strict",
                                                             "v_frac"):
      raise ValueError(f"config.rl.mode must be 'tree' or 'chain' and "
                       f"config.rl.reward 'v_strict' or 'v_frac', got "
                       f"{rl.mode!r}, {rl.reward!r}")
    if not 0 < rl.top_p <= 1 or rl.refine_weight < 0 or (
        rl.supervised_weight < 0) or rl.agreement < 0:
      raise ValueError("config.rl needs 0 < top_p <= 1, refine_weight >= 0, "
                       "supervised_weight >= 0 and agreement >= 0, got "
                       f"{rl.to_dict()}")
    if rl.supervised_weight > 0 and not {"vqa", "ita"} & set(config.tasks):
      raise ValueError("config.rl.supervised_weight > 0 trains the VQA / ITA "
                       "tasks beside RL: add one of them to config.tasks")
    if rl.groups < 1 or rl.group_size < 2 or not 0 <= rl.perfect_ratio <= 1:
      raise ValueError("config.rl needs groups >= 1, group_size >= 2 and "
                       f"0 <= perfect_ratio <= 1, got {rl.to_dict()}")
    if not {"caption", "refine"} <= set(config.tasks):
      raise ValueError("R3-RL samples captions and reflect + refine rollouts: "
                       "config.tasks must hold caption and refine (their "
                       "max_len bound the rollouts)")
    if rl.mode == "tree" and (config.ckpt_every_steps % 2 or
                              config.total_steps % 2):
      raise ValueError("Tree-RL alternates root and branch steps and saves "
                       "after branch steps: config.ckpt_every_steps and "
                       "config.total_steps must be even, got "
                       f"{config.ckpt_every_steps}, {config.total_steps}")
  pipeline.check_layout(config.data.layout)
  for name, t in config.tasks.items():
    if t.weight < 0:
      raise ValueError(f"config.tasks.{name}.weight must be >= 0, got {t.weight}")
  if config.interference.probe_every < 0:
    raise ValueError("config.interference.probe_every must be >= 0, got "
                     f"{config.interference.probe_every}")
  from r3jax.interference import methods  # noqa: PLC0415 (jax-heavy import)
  try:
    methods.make(config.interference.method,
                 **dict(config.interference.method_args))
  except (TypeError, ValueError) as e:
    raise ValueError(f"config.interference: {e}") from None
  # The model's fields are checked by their owner, ModelConfig.
  try:
    model_config(config, 1, config.world.image_size)
  except (TypeError, ValueError) as e:
    raise ValueError(f"config.model: {e}") from None


def mesh_shape(mesh: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """config.mesh resolved on `num_devices` devices (-1: what the others
  leave); a ValueError that says how to fix a mesh that does not fit."""
  shape = {a: int(mesh.get(a, 1)) for a in ("data", "fsdp", "tensor")}
  fixed = math.prod(s for s in shape.values() if s != -1)
  others = shape["fsdp"] * shape["tensor"]
  hint = (f"set config.mesh.data=-1 (here {num_devices // others})"
          if shape["fsdp"] > 0 and shape["tensor"] > 0 and
          num_devices % others == 0 else
          f"choose sizes whose product is {num_devices}")
  free = [a for a, s in shape.items() if s == -1]
  if free and num_devices % fixed == 0:
    shape[free[0]] = num_devices // fixed
  elif free or fixed != num_devices:
    need = (f"a multiple of {fixed}" if free else str(fixed))
    raise ValueError(f"config.mesh={dict(mesh)} needs {need} devices but "
                     f"{num_devices} are available; {hint}")
  return shape


def check_devices(config: ml_collections.ConfigDict, num_devices: int,
                  num_processes: int = 1) -> dict[str, int]:
  """Checks, before anything is built, that config.mesh fits the devices and
  every batch splits over the data-parallel devices (data * fsdp) and the
  processes (training batches); returns the mesh shape."""
  shape = mesh_shape(config.mesh, num_devices)
  dp = shape["data"] * shape["fsdp"]
  batches = {(f"config.tasks.{name}.batch_size" if t.per_image == 1 else
              f"config.tasks.{name}.batch_size/per_image"): (
                  t.batch_size // t.per_image, math.lcm(dp, num_processes))
             for name, t in sorted(config.tasks.items())}
  for key in ("evals", "final_eval"):
    batches[f"config.{key}.batch_size"] = (config[key].batch_size, dp)
  if config.rl.enabled:  # every sampling batch is groups * group_size
    batches["config.rl.groups*group_size"] = (
        config.rl.groups * config.rl.group_size, dp)
  for key, (size, unit) in batches.items():
    if size % unit:
      procs = f" and the {num_processes} processes" if unit != dp else ""
      raise ValueError(
          f"{key}={size} is not divisible by the data-parallel size "
          f"data*fsdp={dp} (config.mesh on {num_devices} devices: {shape})"
          f"{procs}; use a multiple of {unit}")
  return shape


def dump(config: ml_collections.ConfigDict, path: str) -> None:
  with open(path, "w") as f:
    json.dump(config.to_dict(), f, indent=2, sort_keys=True, default=str)


# Values older runs saved that mean something else today: key -> {old: new}.
_RENAMED_VALUES = {"model.remat": {False: "none", True: "full"}}


def load_saved(path: str) -> ml_collections.ConfigDict:
  """A run's saved config.json over today's defaults: keys added since keep
  their defaults, values whose spelling changed are translated, and the
  result is validated."""
  with open(path) as f:
    saved = json.load(f)
  c = defaults()
  select_tasks(c, list(saved["tasks"]))

  def merge(dst, src, prefix=""):
    for k, v in src.items():
      key = prefix + k
      if k not in dst:
        continue
      if isinstance(dst[k], ml_collections.ConfigDict) and isinstance(
          v, dict) and k not in _OPEN_DICTS:
        merge(dst[k], v, key + ".")
        continue
      v = _RENAMED_VALUES.get(key, {}).get(v, v) if not isinstance(
          v, (list, dict)) else v
      dst[k] = type(dst[k])(v) if isinstance(dst[k], tuple) else v

  with c.unlocked():
    merge(c, saved)
    for t in c.tasks.values():  # task settings added since keep defaults
      for k, v in task_defaults(1, 1).items():
        if k not in t:
          t[k] = v
  c.sharding_rules = [tuple(tuple(a) if isinstance(a, list) else a for a in r)
                      for r in c.sharding_rules]
  validate(c)
  return c


def from_file(spec: str, root: str | None = None) -> ml_collections.ConfigDict:
  """'path.py:arg' -> that file's get_config(arg), the path relative to `root`
  (default: the working directory), which is also put on sys.path so that
  config files can import `configs.*`."""
  root = os.path.abspath(root or os.getcwd())
  path, _, arg = spec.partition(":")
  full = path if os.path.isabs(path) else os.path.join(root, path)
  if not os.path.isfile(full):
    raise ValueError(f"config file {path!r} not found (looked in {root})")
  if root not in sys.path:
    sys.path.insert(0, root)
  name = "_r3jax_config_" + os.path.splitext(os.path.basename(full))[0]
  module_spec = importlib.util.spec_from_file_location(name, full)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


# Command-line overrides of config fields, one spelling for every entry point:
# `--config.KEY=VALUE` (r3jax.main's, through ml_collections.config_flags;
# experiments.run and experiments.demo read it with the functions below).
OVERRIDE_PREFIX = "--config."


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
  """Reads `--config.KEY=VALUE` arguments into {KEY: VALUE} (the text as
  given, a later KEY replacing an earlier one); any other argument is a
  ValueError naming it."""
  out = {}
  for arg in args:
    key, eq, value = arg.removeprefix(OVERRIDE_PREFIX).partition("=")
    if not arg.startswith(OVERRIDE_PREFIX) or not eq or not key:
      raise ValueError(f"{arg!r}: expected {OVERRIDE_PREFIX}KEY=VALUE")
    out[key] = value
  return out


def parse_value(text: str, current: Any) -> Any:
  """A command-line string read as a value of the type of `current`, the
  value it replaces: a bool (true/false/1/0), int, float or str as such,
  anything else (tuples, lists, dicts) as a Python literal."""
  if isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"expected a bool, got {text!r}")
    return text.lower() in ("true", "1")
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, str):
    return text
  return ast.literal_eval(text)


def override(config: ml_collections.ConfigDict, key: str, value: Any,
             from_text: bool = False) -> None:
  """Sets the dotted `key` of `config` to `value` (with from_text, a
  command-line string read by `parse_value`; a new key of an open dict, e.g.
  interference.method_args, as a Python literal). A key the config does not
  have, a value that cannot be read and one of the wrong type are
  ValueErrors naming the key (inside the open dicts keys are data)."""
  *parents, leaf = key.split(".")
  node = config
  for i, p in enumerate(parents):
    if not isinstance(node, ml_collections.ConfigDict) or p not in node:
      raise ValueError(f"config has no key {'.'.join(parents[:i + 1])!r} "
                       f"(setting {key!r})")
    node = node[p]
  open_dict = bool(parents) and parents[-1] in _OPEN_DICTS
  if not isinstance(node, ml_collections.ConfigDict) or (
      leaf not in node and not open_dict):
    raise ValueError(f"config has no key {key!r}")
  current = node[leaf] if leaf in node else None
  if from_text:
    try:
      value = (parse_value(value, current) if current is not None else
               ast.literal_eval(value))
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"config key {key!r}: cannot read {value!r} ({e})"
                       ) from None
  if isinstance(current, float) and isinstance(value, int) and not (
      isinstance(value, bool)):
    value = float(value)
  try:
    with node.unlocked():
      node[leaf] = value
  except TypeError as e:
    raise ValueError(f"config key {key!r}: {e}") from None


def get_value(config: ml_collections.ConfigDict, key: str) -> Any:
  """The value at the dotted `key` of `config`; a sub-config as a dict."""
  for p in key.split("."):
    config = config[p]
  if isinstance(config, ml_collections.ConfigDict):
    return config.to_dict()
  return config


def evaluated_tasks(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The trained tasks and config.eval_tasks, by name."""
  out = c.tasks.to_dict()
  known = all_tasks()
  if c.data.source != "world":
    for name, max_len in REAL_MAX_LEN.items():
      known[name].max_len = max_len
  out.update({n: known[n].to_dict() for n in c.eval_tasks if n not in out})
  return ml_collections.ConfigDict(out)


def model_config(config: ml_collections.ConfigDict, vocab_size: int,
                 image_size: int) -> ModelConfig:
  m = config.model
  return ModelConfig.from_names(
      f"{m.encoder}/{m.patch_size}",
      decoder=dict(width=m.dec_width, depth=m.dec_depth, heads=m.dec_heads,
                   mlp=m.dec_mlp),
      vocab_size=vocab_size, image_size=image_size,
      max_len=decoder_len(config),
      dtype=m.dtype, remat=m.remat, scan_layers=m.scan_layers, stem=m.stem,
      pos_init=m.pos_init, stem_convs=m.stem_convs, cross_pos=m.cross_pos,
      dec_identity_from=(m.dec_identity_from if m.dec_identity_from >= 0
                         else 1_000_000),
      dec_alibi=m.dec_alibi, fusion_depth=m.fusion_depth,
      cls_token=m.cls_token, enc_gelu=m.enc_gelu,
      ln_custom_vjp=m.ln_custom_vjp, attention=m.attention,
      **{f"enc_{k}": v for k, v in m.enc_overrides.items()})


def decoder_len(c: ml_collections.ConfigDict) -> int:
  """config.model.max_len, or when 0 the longest trained or evaluated task's."""
  return c.model.max_len or max(
      t.max_len for t in evaluated_tasks(c).values())


def select_tasks(c: ml_collections.ConfigDict, names) -> None:
  """Keeps only the named tasks (their defaults as set in `defaults()`)."""
  known = all_tasks()
  unknown = set(names) - set(known)
  if unknown:
    raise ValueError(f"unknown tasks {sorted(unknown)}; known: {sorted(known)}")
  with c.unlocked():
    c.tasks = ml_collections.ConfigDict(
        {n: (c.tasks[n] if n in c.tasks else known[n]).to_dict()
         for n in names})


def runlocal(c: ml_collections.ConfigDict) -> None:
  """Shrinks a config to a CPU smoke run of a few seconds."""
  c.world.image_size = 32
  c.model.encoder = "mu"
  c.model.enc_overrides = {}
  c.model.patch_size = 8
  c.model.update(dec_width=32, dec_depth=1, dec_heads=2, dec_mlp=64)
  c.data.split_sizes = dict(train=64, validation=16, test=16)
  for t in c.tasks.values():
    t.batch_size = 8
  if "ground" in c.tasks:  # 8 images of 1 caption + 3 questions
    c.tasks.ground.update(batch_size=32, per_image=4)
  c.total_steps = 4
  c.log_every_steps = 1
  c.ckpt_every_steps = 2
  c.eval_every_steps = 2
  c.evals.max_examples = 8
  c.evals.batch_size = 8
  c.final_eval.max_examples = 16
  c.final_eval.batch_size = 16
  c.optim.warmup_steps = 1


def start_from(c: ml_collections.ConfigDict, base: str) -> None:
  """Starts `c` from the run or exported base in directory `base`: its world
  and model settings (which its parameters need), the formats its answers
  and captions are written in (data.relation_answers,
  data.caption_positions, caption_trace: what scoring them needs), room for them (each
  task both train keeps the longer max_len) and config.init_from."""
  path = os.path.join(base, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"base={base!r} has no config.json (a run's workdir or "
                     "an exported base such as experiments/competence/base)")
  saved = load_saved(path)
  c.world = saved.world.to_dict()
  c.model = saved.model.to_dict()
  for key in ("relation_answers", "caption_positions", "caption_trace"):
    c.data[key] = saved.data[key]
  for name, t in c.tasks.items():
    if name in saved.tasks:
      t.max_len = max(t.max_len, saved.tasks[name].max_len)
  c.init_from = base


def world_experiment(arg: str | None, tasks) -> ml_collections.ConfigDict:
  """The config files' shared recipe: defaults, the given tasks, and the
  arguments `runlocal`, `seed=N`, `steps=N`, `method=NAME` (an interference
  aggregation method), `gen_weight=R` (the caption task's weight, the
  understanding tasks keeping 1; sweep it over
  r3jax.interference.methods.log_ratio_grid) and `base=DIR` (start from that
  run's or exported base's parameters, with its world and model settings:
  `base=experiments/competence/base` is the shipped competent model)."""
  arg = parse_arg(arg, runlocal=False, seed=0, steps=0, method="weighted_sum",
                  gen_weight=1.0, base="")
  c = defaults()
  select_tasks(c, tasks)
  if arg.base:
    if arg.runlocal:
      raise ValueError("base=... and runlocal exclude each other: runlocal "
                       "shrinks the model the base's parameters need")
    start_from(c, arg.base)
  c.seed = arg.seed
  c.interference.method = arg.method
  if arg.gen_weight != 1.0:
    if "caption" not in c.tasks or arg.gen_weight <= 0:
      raise ValueError(f"gen_weight={arg.gen_weight} needs the caption task "
                       f"and a positive value; tasks are {sorted(c.tasks)}")
    c.tasks.caption.weight = arg.gen_weight
  if arg.runlocal:
    runlocal(c)
  if arg.steps:
    c.total_steps = arg.steps
  return c


# Subword lengths of the real-data tasks: COCO captions are mostly 10-15
# words and VQAv2 questions 6-8; longer texts are cut (real_setup.Fit).
REAL_MAX_LEN = {"caption": 40, "vqa": 32, "ita": 48}


def coco_vqa_experiment(arg: str | None, tasks) -> ml_collections.ConfigDict:
  """The real-data config files' recipe: COCO Captions + VQAv2 from the
  official files in `manual_dir=PATH` (or $R3JAX_COCO_DIR), ViT-B/16 at 224
  pixels with a 6-layer decoder, and the arguments of `world_experiment`
  (`runlocal` shrinks the model and the data to a CPU smoke run)."""
  arg = parse_arg(arg, runlocal=False, seed=0, steps=0, method="weighted_sum",
                  gen_weight=1.0, manual_dir="", karpathy=False)
  world_arg = ",".join(f"{k}={arg[k]}" for k in ("seed", "steps", "method",
                                                  "gen_weight"))
  c = world_experiment(world_arg, tasks)
  c.data.source = "coco_vqa"
  c.data.manual_dir = arg.manual_dir or os.environ.get("R3JAX_COCO_DIR", "")
  c.data.karpathy = arg.karpathy
  c.world.image_size = 224
  # enc_overrides is assigned, not update()d: update merges into the joint
  # recipe's overrides, which would shrink ViT-B to width 128 and 2 layers.
  c.model.enc_overrides = {}
  c.model.update(encoder="B", patch_size=16, dec_width=512, dec_depth=6,
                 dec_heads=8, dec_mlp=2048, dtype="bfloat16")
  for name, max_len in REAL_MAX_LEN.items():
    if name in c.tasks:
      c.tasks[name].max_len = max_len
  c.total_steps = arg.steps or 50_000
  c.evals.update(max_examples=1000, batch_size=128)
  # COCO's official split and VQAv2 have no test answers.
  c.final_eval.update(split="test" if arg.karpathy else "validation",
                      max_examples=5000)
  if arg.runlocal:
    runlocal(c)
    c.model.dtype = "float32"
    c.data.vocab_size = 64
    c.data.max_per_split = 16
  return c
