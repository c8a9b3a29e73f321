"""Pretrained ViT weights into the r3jax image encoder, from local files only.

Two public layouts are read:

  big_vision / vision_transformer .npz (Flax names joined by "/"):
    [params/][img/]embedding/kernel            P x P x 3 x D  (HWIO conv)
    [...]pos_embedding                         1 x T x D  (big_vision: patches only)
    [...]Transformer/posembed_input/pos_embedding   (vision_transformer: with CLS)
    [...]cls                                   1 x 1 x D  (pool_type "tok" only)
    [...]Transformer/encoderblock_<i>/...      per layer, or encoderblock/... with a
                                               leading depth axis (scanned models)
      LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value} (D x N x K),
      .../out (N x K x D), LayerNorm_1, MlpBlock_0/Dense_0, MlpBlock_0/Dense_1
    [...]Transformer/encoder_norm
  Hugging Face ViT state dicts (.safetensors, or a PyTorch .bin/.pt, which
  needs torch), optionally under a prefix such as "vit." or "encoder.":
    embeddings.cls_token 1 x 1 x D, embeddings.position_embeddings 1 x (1+P) x D,
    embeddings.patch_embeddings.projection.weight D x 3 x P x P,
    encoder.layer.<i>.{layernorm_before, attention.attention.{query,key,value},
    attention.output.dense, layernorm_after, intermediate.dense, output.dense}
    (as hub checkpoints are saved; transformers 5 names them layers.<i>.{
    layernorm_before, attention.{q,k,v,o}_proj, layernorm_after, mlp.fc1/2}),
    layernorm  (torch Linear weights are out x in)

Heads (classifier, MAP pooling, pooler) are not read: the decoder attends to
every image token. What makes the r3jax encoder compute the checkpoint's
function is set in the ModelConfig, not guessed: `cls_token` for checkpoints
with a [CLS] token (big_vision's token carries no position, so its position
row is set to zero), `enc_gelu="erf"` for Hugging Face's exact GELU. LayerNorm
epsilon stays r3jax's 1e-6 (HF's 1e-12 changes outputs by ~1e-6).

When the checkpoint's patch grid differs from the config's (another image
size), the patch position embeddings are resampled bilinearly on the grid
(scipy.ndimage.zoom, order 1, corners kept, as big_vision and
vision_transformer do); the [CLS] position is kept as is.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np
import scipy.ndimage

from r3jax.model.config import ModelConfig

Params = dict[str, Any]

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of a .safetensors file as a numpy array (no torch needed):
  an 8-byte little-endian header length, a JSON header of name -> dtype,
  shape and byte offsets, then the raw little-endian data."""
  with open(path, "rb") as f:
    raw = f.read()
  if len(raw) < 8:
    raise ValueError(f"{path}: too short for a safetensors file")
  (n,) = struct.unpack("<Q", raw[:8])
  if 8 + n > len(raw):
    raise ValueError(f"{path}: header length {n} runs past the end of the file")
  try:
    header = json.loads(raw[8:8 + n])
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: the safetensors header is not JSON ({e})") from e
  data, out = raw[8 + n:], {}
  for name, spec in header.items():
    if name == "__metadata__":
      continue
    if spec["dtype"] not in _SAFETENSORS_DTYPES:
      raise ValueError(f"{path}: tensor {name} has unsupported dtype "
                       f"{spec['dtype']}")
    begin, end = spec["data_offsets"]
    dtype = np.dtype(_SAFETENSORS_DTYPES[spec["dtype"]]).newbyteorder("<")
    out[name] = np.frombuffer(data[begin:end], dtype).reshape(spec["shape"])
  return out


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # noqa: PLC0415
  except ImportError as e:
    raise ImportError(f"{path} is a PyTorch state dict; reading it needs torch "
                      "(pip install -e '.[bench]'), or convert it to "
                      ".safetensors") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  if "state_dict" in state and isinstance(state["state_dict"], Mapping):
    state = state["state_dict"]
  return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
          for k, v in state.items()}


def read_checkpoint(path: str) -> tuple[str, dict[str, np.ndarray]]:
  """("big_vision" or "hf", flat name -> array) of a checkpoint file, or of a
  Hugging Face model directory (model.safetensors or pytorch_model.bin)."""
  if os.path.isdir(path):
    for name in ("model.safetensors", "pytorch_model.bin"):
      if os.path.exists(os.path.join(path, name)):
        return read_checkpoint(os.path.join(path, name))
    raise FileNotFoundError(f"{path} holds neither model.safetensors nor "
                            "pytorch_model.bin")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no pretrained encoder checkpoint at {path}")
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as f:
      return "big_vision", {k: f[k] for k in f.files}
  if path.endswith(".safetensors"):
    return "hf", read_safetensors(path)
  if path.endswith((".bin", ".pt", ".pth")):
    return "hf", _read_torch(path)
  raise ValueError(f"{path}: unknown checkpoint format; expected .npz "
                   "(big_vision), .safetensors or .bin/.pt/.pth (Hugging Face "
                   "ViT), or a Hugging Face model directory")


def resample_positions(pos_TxD: np.ndarray, grid: int) -> np.ndarray:
  """Patch position embeddings (T = g * g rows, row-major over the grid) on a
  grid x grid grid, bilinearly (order-1 zoom with the corners kept)."""
  old = math.isqrt(pos_TxD.shape[0])
  if old * old != pos_TxD.shape[0]:
    raise ValueError(f"{pos_TxD.shape[0]} patch positions are not a square grid")
  if old == grid:
    return pos_TxD
  zoomed = scipy.ndimage.zoom(pos_TxD.reshape(old, old, -1).astype(np.float64),
                              (grid / old, grid / old, 1), order=1)
  return zoomed.reshape(grid * grid, -1).astype(pos_TxD.dtype)


class _Names:
  """Lookup of a flat checkpoint by name suffix (the prefix is found once)."""

  def __init__(self, flat: Mapping[str, np.ndarray], anchor: str, path: str):
    hits = [k for k in flat if k.endswith(anchor)]
    if len(hits) != 1:
      raise ValueError(f"{path}: expected one tensor named *{anchor}, found "
                       f"{len(hits)}; is this a ViT checkpoint of that layout?")
    self.prefix, self.flat, self.path = hits[0][:-len(anchor)], flat, path

  def has(self, name: str) -> bool:
    return self.prefix + name in self.flat

  def __call__(self, name: str) -> np.ndarray:
    if not self.has(name):
      raise ValueError(f"{self.path}: tensor {self.prefix + name} is missing")
    return np.asarray(self.flat[self.prefix + name], np.float32)


def _big_vision(flat, path: str) -> dict[str, Any]:
  """Encoder parameters in a neutral form: embed (P*P*3 x D), embed_bias,
  cls (D) or None, pos (T x D, with the CLS row first when cls_pos), blocks
  (a list of per-layer dicts in r3jax naming), ln_final."""
  get = _Names(flat, "embedding/kernel", path)
  kernel = get("embedding/kernel")
  out = {"embed": kernel.reshape(-1, kernel.shape[-1]),
         "embed_bias": get("embedding/bias"),
         "cls": get("cls").reshape(-1) if get.has("cls") else None}
  if get.has("pos_embedding"):  # big_vision: patches only
    out["pos"], out["cls_pos"] = get("pos_embedding")[0], False
  else:  # vision_transformer: the CLS position first when there is a CLS
    out["pos"] = get("Transformer/posembed_input/pos_embedding")[0]
    out["cls_pos"] = out["cls"] is not None
  t = "Transformer/"

  def block(name: str, take) -> dict[str, Any]:
    att = f"{name}/MultiHeadDotProductAttention_0/"
    ln = lambda n: {"scale": take(f"{name}/{n}/scale"),  # noqa: E731
                    "bias": take(f"{name}/{n}/bias")}
    dense = lambda n: {"kernel": take(f"{n}/kernel"),  # noqa: E731
                       "bias": take(f"{n}/bias")}
    return {"ln_attn": ln("LayerNorm_0"), "ln_mlp": ln("LayerNorm_1"),
            "attn": {k: dense(att + k) for k in ("query", "key", "value", "out")},
            "mlp": {"fc1": dense(f"{name}/MlpBlock_0/Dense_0"),
                    "fc2": dense(f"{name}/MlpBlock_0/Dense_1")}}

  if get.has(t + "encoderblock/LayerNorm_0/scale"):  # scanned: depth-stacked
    depth = get(t + "encoderblock/LayerNorm_0/scale").shape[0]
    out["blocks"] = [block(t + "encoderblock",
                           lambda n, i=i: get(n)[i]) for i in range(depth)]
  else:
    depth = len({m.group(1) for k in flat for m in
                 [re.search(r"Transformer/encoderblock_(\d+)/", k)] if m})
    out["blocks"] = [block(f"{t}encoderblock_{i}", get) for i in range(depth)]
  out["ln_final"] = {"scale": get(t + "encoder_norm/scale"),
                     "bias": get(t + "encoder_norm/bias")}
  return out


# Per-layer tensor names of Hugging Face ViT state dicts: as checkpoints on the
# hub are saved (transformers 4) and as transformers 5 names them.
_HF_NAMES = {
    "v4": {"ln_attn": "encoder.layer.{}.layernorm_before".format,
           "ln_mlp": "encoder.layer.{}.layernorm_after".format,
           "query": "encoder.layer.{}.attention.attention.query".format,
           "key": "encoder.layer.{}.attention.attention.key".format,
           "value": "encoder.layer.{}.attention.attention.value".format,
           "out": "encoder.layer.{}.attention.output.dense".format,
           "fc1": "encoder.layer.{}.intermediate.dense".format,
           "fc2": "encoder.layer.{}.output.dense".format},
    "v5": {"ln_attn": "layers.{}.layernorm_before".format,
           "ln_mlp": "layers.{}.layernorm_after".format,
           "query": "layers.{}.attention.q_proj".format,
           "key": "layers.{}.attention.k_proj".format,
           "value": "layers.{}.attention.v_proj".format,
           "out": "layers.{}.attention.o_proj".format,
           "fc1": "layers.{}.mlp.fc1".format,
           "fc2": "layers.{}.mlp.fc2".format},
}


def _hf(flat, path: str) -> dict[str, Any]:
  """As _big_vision, from a Hugging Face ViT state dict."""
  get = _Names(flat, "embeddings.patch_embeddings.projection.weight", path)
  w = get("embeddings.patch_embeddings.projection.weight")  # D x 3 x P x P
  out = {"embed": w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]),
         "embed_bias": get("embeddings.patch_embeddings.projection.bias"),
         "cls": get("embeddings.cls_token").reshape(-1),
         "pos": get("embeddings.position_embeddings")[0], "cls_pos": True}
  names = next((n for n in _HF_NAMES.values() if get.has(n["ln_attn"](0)
                                                        + ".weight")), None)
  if names is None:
    raise ValueError(f"{path}: no ViT layer 0 under {get.prefix!r} (expected "
                     f"{[n['ln_attn'](0) for n in _HF_NAMES.values()]})")
  depth = 0
  while get.has(names["ln_attn"](depth) + ".weight"):
    depth += 1

  def ln(name: str) -> dict[str, np.ndarray]:
    return {"scale": get(name + ".weight"), "bias": get(name + ".bias")}

  def dense(name: str) -> dict[str, np.ndarray]:  # torch Linear is out x in
    return {"kernel": get(name + ".weight").T, "bias": get(name + ".bias")}

  out["blocks"] = [{
      "ln_attn": ln(names["ln_attn"](i)), "ln_mlp": ln(names["ln_mlp"](i)),
      "attn": {k: dense(names[k](i)) for k in ("query", "key", "value", "out")},
      "mlp": {k: dense(names[k](i)) for k in ("fc1", "fc2")}}
      for i in range(depth)]
  out["ln_final"] = ln("layernorm")
  return out


def _place(neutral: dict[str, Any], cfg: ModelConfig, path: str) -> Params:
  """The neutral parameters checked against `cfg` and shaped as the r3jax
  Encoder's (plain per-layer layout, numpy leaves)."""
  d, n = cfg.enc_width, cfg.enc_heads
  k = d // n
  problems = []
  width, pixels = neutral["embed"].shape[1], neutral["embed"].shape[0]
  if width != d:
    problems.append(f"width {width} (config.model: {d})")
  if len(neutral["blocks"]) != cfg.enc_depth:
    problems.append(f"depth {len(neutral['blocks'])} (config.model: "
                    f"{cfg.enc_depth})")
  patch = math.isqrt(pixels // 3)
  if patch != cfg.patch_size:
    problems.append(f"patch size {patch} (config.model.patch_size: "
                    f"{cfg.patch_size})")
  mlp = neutral["blocks"][0]["mlp"]["fc1"]["kernel"].shape[-1] if neutral[
      "blocks"] else cfg.enc_mlp
  if mlp != cfg.enc_mlp:
    problems.append(f"mlp {mlp} (config.model: {cfg.enc_mlp})")
  q = neutral["blocks"][0]["attn"]["query"]["kernel"] if neutral["blocks"] else None
  if q is not None and q.ndim == 3 and q.shape[1] != n:
    problems.append(f"{q.shape[1]} heads (config.model: {n})")
  has_cls = neutral["cls"] is not None
  if has_cls != cfg.cls_token:
    problems.append(f"{'a' if has_cls else 'no'} [CLS] token (config.model."
                    f"cls_token: {cfg.cls_token})")
  if cfg.stem != "patch":
    problems.append(f"a linear patch embedding (config.model.stem: {cfg.stem!r})")
  if problems:
    raise ValueError(f"{path} does not fit the configured encoder: it has "
                     + "; ".join(problems))

  pos = neutral["pos"]
  cls_pos = pos[:1] if neutral["cls_pos"] else np.zeros((1, d), np.float32)
  patches = pos[1:] if neutral["cls_pos"] else pos
  grid = cfg.image_size // cfg.patch_size
  pos = resample_positions(patches, grid)
  if has_cls:
    pos = np.concatenate([cls_pos, pos])

  def heads(dense: dict[str, np.ndarray], out: bool) -> dict[str, np.ndarray]:
    kernel, bias = dense["kernel"], dense["bias"]
    if out:  # (N x K) x D
      return {"kernel": kernel.reshape(n, k, d), "bias": bias.reshape(d)}
    return {"kernel": kernel.reshape(d, n, k), "bias": bias.reshape(n, k)}

  blocks = {}
  for i, b in enumerate(neutral["blocks"]):
    blocks[i] = {"ln_attn": b["ln_attn"], "ln_mlp": b["ln_mlp"], "mlp": b["mlp"],
                 "attn": {name: heads(b["attn"][name], name == "out")
                          for name in ("query", "key", "value", "out")}}
  params = {"patch_embed": {"kernel": neutral["embed"],
                            "bias": neutral["embed_bias"]},
            "pos_embed": pos, "blocks": blocks, "ln_final": neutral["ln_final"]}
  if has_cls:
    params["cls"] = neutral["cls"]
  return params


def load_encoder(path: str, cfg: ModelConfig) -> Params:
  """The encoder parameters of the checkpoint at `path` (big_vision .npz or
  Hugging Face ViT), shaped for `cfg` (r3jax plain layer layout: stack them
  with r3jax.model.scan when cfg.scan_layers). Raises ValueError naming every
  way the checkpoint does not fit the config."""
  kind, flat = read_checkpoint(path)
  neutral = (_big_vision if kind == "big_vision" else _hf)(flat, path)
  return _place(neutral, cfg, path)


def with_encoder(params: Params, encoder: Params, scanned: bool) -> Params:
  """Model parameters (a train state's "params") with the encoder's replaced
  by `encoder` (load_encoder's, plain layout), each array placed like the one
  it replaces. Every encoder parameter must be given, at its shape."""
  if scanned:
    blocks = [encoder["blocks"][i] for i in sorted(encoder["blocks"])]
    encoder = {**encoder, "blocks": jax.tree.map(lambda *xs: np.stack(xs),
                                                 *blocks)}
  have = jax.tree_util.tree_flatten_with_path(params["encoder"])[0]
  got = dict(jax.tree_util.tree_flatten_with_path(encoder)[0])
  missing = [jax.tree_util.keystr(k) for k, _ in have if k not in got]
  extra = [jax.tree_util.keystr(k) for k in set(got) - {k for k, _ in have}]
  if missing or extra:
    raise ValueError(f"pretrained encoder parameters do not match the model's: "
                     f"missing {missing[:4]}, unexpected {extra[:4]}")
  leaves = []
  for key, old in have:
    new = np.asarray(got[key], np.float32)
    if new.shape != old.shape:
      raise ValueError(f"pretrained encoder{jax.tree_util.keystr(key)} has shape "
                       f"{new.shape}; the model's is {old.shape}")
    leaves.append(jax.device_put(new.astype(old.dtype), old.sharding))
  treedef = jax.tree.structure(params["encoder"])
  return {**params, "encoder": jax.tree.unflatten(treedef, leaves)}
