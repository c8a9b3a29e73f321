"""Where a relation answer's information is lost between the image and the
answer token: probes and attention on a run's relation questions.

  from r3jax.analysis import probe
  print(probe.table(probe.relation_diagnosis("runs/joint")))
  python -m experiments.competence.diagnose runs/joint

"is REF_A REL REF_B ?" needs both objects' positions at the answer. On the
relation questions of the first images of a split (default: 2,000 training
images, about 1,200 questions; the probes read representations, they do not
score the model):
  1. image tokens: a ridge probe from the image token (model.encode) at each
     object's centre patch to the object's x and y, and linear classifiers
     of its size, colour and shape;
  2. decoder: the same probe from the residual stream after the last decoder
     layer at REF_A's last word, at REF_B's last word and at the answer
     position (the <sep> token, whose logits give the answer), and the
     answer itself (yes / no) from the answer position;
  3. cross-attention (mean over heads) at those positions: the share that
     falls on the patches each object covers, against the share of patches
     it covers (what uniform attention gives).
Probes are fitted on 70% of the images and scored (R², or accuracy for
the answer) on the other 30%.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from r3jax.world import scene_from_arrays
from r3jax.world.language import REL_WORDS

REL_STARTS = ("left", "right", "to", "above", "below")


@dataclasses.dataclass(frozen=True)
class Item:
  """One relation question: its image, tokens and the objects it names."""
  record: int
  tokens: np.ndarray           # prompt <task> q... <sep>, unpadded
  a_end: int                   # token index of REF_A's last word
  b_end: int                   # token index of REF_B's last word
  answer: int                  # token index of <sep>
  a_xy: tuple[float, float]    # object centres in [0, 1]
  b_xy: tuple[float, float]
  a_patches: tuple[int, ...]   # patches the objects' bounding boxes touch
  b_patches: tuple[int, ...]
  a_kind: tuple[str, str, str]  # A's (size, colour, shape)
  relation: str                # "left" or "above": A REL B as canonical
  swapped: bool                # ... with A and B swapped ("right of")
  yes: bool


def _find(scene, words: Sequence[str], cfg) -> int:
  """The one object a reference ("the [size] [colour] shape|object") names."""
  want = {"size": [w for w in words if w in cfg.sizes],
          "color": [w for w in words if w in cfg.colors],
          "shape": [w for w in words if w in cfg.shapes]}
  hits = [i for i, o in enumerate(scene.objects)
          if all(getattr(o, k) == v[0] for k, v in want.items() if v)]
  if len(hits) != 1:
    raise ValueError(f"reference {' '.join(words)!r} names {len(hits)} "
                     "objects")
  return hits[0]


def patches_of(obj, cfg, patch_size: int) -> tuple[int, ...]:
  """Row-major indices of the patches the object's bounding box touches."""
  side = cfg.image_size // patch_size
  r = cfg.radius_px(obj.size)
  cx, cy = obj.x * cfg.image_size, obj.y * cfg.image_size
  cols = range(max(0, int((cx - r) // patch_size)),
               min(side, int((cx + r) // patch_size) + 1))
  rows = range(max(0, int((cy - r) // patch_size)),
               min(side, int((cy + r) // patch_size) + 1))
  return tuple(i * side + j for i in rows for j in cols)


def relation_items(records: Sequence[Mapping], tokenizer, cfg,
                   patch_size: int) -> list[Item]:
  """Every relation question of the records, parsed back to its objects."""
  out = []
  for k, rec in enumerate(records):
    scene = scene_from_arrays(rec["scene"], cfg)
    for qtype, q, a in zip(rec["vqa_types"], rec["vqa_questions"],
                           rec["vqa_answers"]):
      if qtype != "relation":
        continue
      words = q.split()  # is REF_A REL REF_B ?
      rel = next(i for i, w in enumerate(words) if i > 1 and w in REL_STARTS)
      b_start = len(words) - 1 - words[::-1].index("the")
      ia, ib = _find(scene, words[1:rel], cfg), _find(scene, words[b_start:-1],
                                                      cfg)
      ids = [tokenizer.task_id("vqa"), *tokenizer.encode(q, strict=True),
             tokenizer.sep_id]
      if len(ids) != len(words) + 2:
        raise ValueError(f"expected one token per word in {q!r}")
      oa, ob = scene.objects[ia], scene.objects[ib]
      relation, swapped = REL_WORDS[tuple(words[rel:b_start])]
      out.append(Item(k, np.asarray(ids, np.int32), rel, len(words) - 1,
                      len(words) + 1, (oa.x, oa.y), (ob.x, ob.y),
                      patches_of(oa, cfg, patch_size),
                      patches_of(ob, cfg, patch_size), oa.kind, relation,
                      swapped,
                      a == "yes"))
  return out


def trace(model, images, tokens):
  """(image tokens B x P x D, the residual stream after each decoder layer
  [B x L x D], each layer's cross-attention per head [B x N x L x P])."""
  img = model.encode(images)
  dec = model.decoder
  x = dec._embed(tokens, 0)
  img_d = img.astype(dec.dtype)
  states, attn = [], []
  for blk in dec._layers():
    h = blk.ln_cross(x + blk.self_attend(x))
    q = blk.cross_attn.query(h)
    k, _ = blk.cross_attn.kv(img_d)
    s = jnp.einsum("blnk,bpnk->bnlp", q, k) * q.shape[-1] ** -0.5
    attn.append(jax.nn.softmax(s.astype(jnp.float32), -1))
    x = blk(x, img_d)
    states.append(x)
  return img, states, attn


LAMBDAS = tuple(10.0 ** np.arange(-2, 5))


def _fit(z, y, lam):
  return np.linalg.solve(z.T @ z + lam * np.eye(z.shape[1]), z.T @ y)


def _r2(pred, y):
  return 1 - ((pred - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)


def _design(x: np.ndarray, train: np.ndarray) -> np.ndarray:
  """Features standardised on the fitting rows, with a bias column."""
  mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
  return np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], 1)


def ridge_r2(x: np.ndarray, y: np.ndarray, train: np.ndarray) -> np.ndarray:
  """Held-out R² per target column of a ridge fit on standardised features:
  rows where `train` is True fit (the last fifth of them picks the ridge
  strength per column from LAMBDAS), the other rows score."""
  z = _design(x, train)
  zt, yt = z[train], y[train]
  cut = int(len(zt) * 0.8)
  inner = np.stack([_r2(zt[cut:] @ _fit(zt[:cut], yt[:cut], lam), yt[cut:])
                    for lam in LAMBDAS])  # lambdas x columns
  best = np.asarray(LAMBDAS)[inner.argmax(0)]
  return np.array([_r2(z[~train] @ _fit(zt, yt[:, j], lam), y[~train, j])
                   for j, lam in enumerate(best)])


def ridge_accuracy(x: np.ndarray, labels: Sequence[str], train: np.ndarray
                   ) -> float:
  """Held-out accuracy of a one-vs-rest ridge classifier (argmax of ridge
  fits to the one-hot labels, each column's strength chosen as in
  ridge_r2)."""
  classes = sorted(set(labels))
  y = np.array([[float(l == c) for c in classes] for l in labels])
  z = _design(x, train)
  zt, yt = z[train], y[train]
  cut = int(len(zt) * 0.8)
  inner = [((zt[cut:] @ _fit(zt[:cut], yt[:cut], lam)).argmax(1) ==
            yt[cut:].argmax(1)).mean() for lam in LAMBDAS]
  w = _fit(zt, yt, LAMBDAS[int(np.argmax(inner))])
  return float(((z[~train] @ w).argmax(1) == y[~train].argmax(1)).mean())


def _split(items: Sequence[Item], frac: float = 0.7) -> np.ndarray:
  records = sorted({it.record for it in items})
  cut = records[int(len(records) * frac)]
  return np.array([it.record < cut for it in items])


def relation_diagnosis(workdir: str, n_images: int = 2000,
                       split: str = "train", batch: int = 64
                       ) -> dict[str, float]:
  """The three measurements above for `workdir`'s latest parameters."""
  from r3jax import config as config_lib  # noqa: PLC0415
  from r3jax.train import checkpoint as ckpt_lib  # noqa: PLC0415
  from r3jax.run import loop  # noqa: PLC0415
  from r3jax.data import world_tfds  # noqa: PLC0415

  config = config_lib.load_saved(os.path.join(workdir, "config.json"))
  with config.unlocked():
    config.init_from, config.init_from_partial = "", False
    config.mesh = dict(data=1, fsdp=1, tensor=1)
  mesh, world, setup, _ = loop.build(config, jax.devices()[:1])
  params = ckpt_lib.load_params(workdir, setup.abstract["params"])
  source = world_tfds.data_source(world.builder, split)
  records = [source[i] for i in range(min(n_images, len(source)))]
  items = relation_items(records, world.tokenizer, world.world,
                         config.model.patch_size)
  length = max(len(it.tokens) for it in items)
  run = jax.jit(lambda p, im, t: trace(setup.model(p), im, t))
  img_feats, pos_feats, attn_at = [], {}, {}
  with jax.set_mesh(mesh):
    for s in range(0, len(items), batch):
      chunk = items[s:s + batch]
      tokens = np.full((len(chunk), length), world.tokenizer.pad_id, np.int32)
      for i, it in enumerate(chunk):
        tokens[i, :len(it.tokens)] = it.tokens
      images = np.stack([records[it.record]["image"] for it in chunk])
      img, states, attn = jax.device_get(run(params, images, tokens))
      rows = np.arange(len(chunk))
      centre = [[_centre_patch(xy, world.world.image_size,
                               config.model.patch_size) for xy in
                 (it.a_xy, it.b_xy)] for it in chunk]
      img_feats.append(np.stack([img[i, c[0]] for i, c in enumerate(centre)]))
      for where in ("a_end", "b_end", "answer"):
        at = np.array([getattr(it, where) for it in chunk])
        pos_feats.setdefault(where, []).append(states[-1][rows, at])
        for layer, p in enumerate(attn):
          p_at = p[rows, :, at]  # B x N x P
          for obj in ("a", "b"):
            share = np.stack([
                p_at[i][:, list(getattr(it, f"{obj}_patches"))].sum(-1)
                for i, it in enumerate(chunk)])  # B x N
            attn_at.setdefault((where, layer, obj), []).extend(share)
  train = _split(items)
  a_xy = np.array([it.a_xy for it in items])
  b_xy = np.array([it.b_xy for it in items])
  out = {"items": float(len(items))}
  feats = np.concatenate(img_feats)
  r2 = ridge_r2(feats, a_xy, train)
  out.update({"image_tokens->a_x": r2[0], "image_tokens->a_y": r2[1]})
  for k, attr in enumerate(("size", "color", "shape")):
    out[f"image_tokens->a_{attr}_acc"] = ridge_accuracy(
        feats, [it.a_kind[k] for it in items], train)
  for where in ("a_end", "b_end", "answer"):
    feats = np.concatenate(pos_feats[where])
    r2 = ridge_r2(feats, np.concatenate([a_xy, b_xy], 1), train)
    for name, v in zip(("a_x", "a_y", "b_x", "b_y"), r2):
      out[f"{where}->{name}"] = v
  feats = np.concatenate(pos_feats["answer"])
  yes = np.array([it.yes for it in items], np.float64)[:, None] * 2 - 1
  out["answer->yes_r2"] = ridge_r2(feats, yes, train)[0]
  side = (world.world.image_size // config.model.patch_size) ** 2
  for (where, layer, obj), shares in sorted(attn_at.items()):
    shares = np.asarray(shares)  # questions x heads
    out[f"attn/{where}/layer{layer}/{obj}"] = float(shares.mean())
    for head, v in enumerate(shares.mean(0)):
      out[f"attn/{where}/layer{layer}/head{head}/{obj}"] = float(v)
  for obj in ("a", "b"):
    out[f"attn/uniform/{obj}"] = float(np.mean(
        [len(getattr(it, f"{obj}_patches")) / side for it in items]))
  return {k: float(v) for k, v in out.items()}


def _centre_patch(xy, image_size: int, patch_size: int) -> int:
  side = image_size // patch_size
  col = min(side - 1, int(xy[0] * image_size // patch_size))
  row = min(side - 1, int(xy[1] * image_size // patch_size))
  return row * side + col


def table(d: Mapping[str, float]) -> str:
  """The diagnosis as markdown: probe R² by position, attention shares."""
  lines = [f"{int(d['items'])} relation questions; held-out R² of linear "
           "probes (1 = read exactly, 0 = no better than the mean).", "",
           "| from | object A x | object A y | object B x | object B y |",
           "|---|---|---|---|---|",
           f"| image token at A's centre | {d['image_tokens->a_x']:.3f} | "
           f"{d['image_tokens->a_y']:.3f} | | |"]
  for where, label in (("a_end", "REF_A's last word"),
                       ("b_end", "REF_B's last word"),
                       ("answer", "answer position")):
    lines.append(f"| {label} | " + " | ".join(
        f"{d[f'{where}->{n}']:.3f}" for n in ("a_x", "a_y", "b_x", "b_y"))
        + " |")
  lines += ["", "Object A's attributes from the image token at its centre "
            "(held-out accuracy of a linear classifier): size "
            f"{d['image_tokens->a_size_acc']:.3f}, colour "
            f"{d['image_tokens->a_color_acc']:.3f}, shape "
            f"{d['image_tokens->a_shape_acc']:.3f}."]
  lines += ["", f"Answer (yes = 1, no = -1) from the answer position: R² "
            f"{d['answer->yes_r2']:.3f}.", "",
            "Cross-attention share on each object's patches (mean over "
            "heads); uniform attention gives A "
            f"{d['attn/uniform/a']:.3f}, B {d['attn/uniform/b']:.3f}.", "",
            "| position | layer | on A | on B |", "|---|---|---|---|"]
  layers = sorted({int(k.split("/")[2][5:]) for k in d
                   if k.startswith("attn/a_end/")})
  heads = sorted({int(k.split("/")[3][4:]) for k in d
                  if k.startswith("attn/a_end/layer0/head")})
  for where in ("a_end", "b_end", "answer"):
    for layer in layers:
      lines.append(f"| {where} | {layer} | "
                   f"{d[f'attn/{where}/layer{layer}/a']:.3f} | "
                   f"{d[f'attn/{where}/layer{layer}/b']:.3f} |")
  if heads:  # diagnoses written before per-head shares have none
    lines += ["", "Per head (on A / on B): a head that selects the named "
              "object puts more on it than on the other.", "",
              "| position | layer | " + " | ".join(f"head {h}" for h in heads)
              + " |", "|---|---|" + "---|" * len(heads)]
    for where in ("a_end", "b_end", "answer"):
      for layer in layers:
        lines.append(f"| {where} | {layer} | " + " | ".join(
            f"{d[f'attn/{where}/layer{layer}/head{h}/a']:.2f} / "
            f"{d[f'attn/{where}/layer{layer}/head{h}/b']:.2f}"
            for h in heads) + " |")
  return "\n".join(lines)
