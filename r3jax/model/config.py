"""Model configuration and the named transformer sizes.

A config is built either field by field (every field is keyword-only):

  ModelConfig(vocab_size=1000, image_size=64, patch_size=8, enc_width=192,
              enc_depth=12, enc_heads=3, enc_mlp=768, dec_width=192, dec_depth=4,
              dec_heads=3, dec_mlp=768, max_len=32)

or from named sizes plus overrides:

  ModelConfig.from_names("Ti/8", decoder=dict(depth=4), vocab_size=1000,
                         max_len=32, image_size=64)

where the encoder name is a `VIT_SIZES` key with an optional "/<patch size>", and
the decoder is a `VIT_SIZES` key, a dict overriding some of (width, depth, heads, mlp)
of the encoder's size, or None for the encoder's size. `mlp` defaults to 4 * width
when a dict changes the width but not the mlp. Other keywords set fields directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# (width, depth, heads, mlp)
VIT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "mu": (32, 2, 2, 64),
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Activation checkpointing (remat) policies for every encoder and decoder block,
# by name: what a block keeps from its forward pass for the backward pass.
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    # No remat: everything is kept.
    "none": None,
    # Keeps nothing but the block's input; the backward pass reruns the block.
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keeps the products with weights (q/k/v/out projections, MLP); recomputes
    # attention scores and softmax, LayerNorms and GELU.
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Keeps every matrix product, attention's batched ones too.
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    # As "dots", but the kept products wait in host memory (pinned_host).
    "offload": jax.checkpoint_policies.offload_dot_with_no_batch_dims(
        "device", "pinned_host"),
}


ATTENTION = ("auto", "xla", "cudnn")
POS_INITS = ("normal", "sincos2d")
CROSS_POS = ("none", "xy")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """Sizes of the ViT encoder and the text decoder.

  `dtype` is the compute dtype; parameters are always float32. `max_len` bounds the
  decoder sequence (learned positions and KV-cache length). `remat` names a
  `REMAT_POLICIES` entry applied to every block. With `scan_layers` the encoder's
  and the decoder's blocks are each one module whose parameters are stacked along
  a leading "layers" axis and run by jax.lax.scan (r3jax/model/scan.py); the
  model computes the same function, and scan.pyloop_to_scan / scan_to_pyloop
  convert parameters between the two layouts.
  """
  vocab_size: int
  image_size: int = 64
  patch_size: int = 8
  enc_width: int
  enc_depth: int
  enc_heads: int
  enc_mlp: int
  dec_width: int
  dec_depth: int
  dec_heads: int
  dec_mlp: int
  max_len: int
  dtype: str = "float32"
  remat: str = "none"
  scan_layers: bool = False
  # "patch": the ViT's linear patch embedding. "conv": stride-2 3x3 convolutions
  # down to patch_size / 2, then a 2x2 linear patch embedding (Xiao et al., 2021,
  # "Early convolutions help transformers see better"): same tokens, but small
  # shapes are learnt in far fewer steps.
  stem: str = "patch"
  # Residual stride-1 3x3 convolutions at the end of the conv stem, each
  # widening a token's view by patch_size pixels (ConvStem).
  stem_convs: int = 0
  # How the encoder's learned patch positions start: "normal" (random, std
  # width**-0.5) or "sincos2d" (the fixed 2-D sine-cosine code of MAE and
  # big_vision's plain ViT, half the channels for the row, half for the
  # column): x and y are then linear in the tokens from the first step,
  # which relations ("left of") read.
  pos_init: str = "normal"
  # What the decoder's cross-attention values carry besides the image tokens:
  # "none", or "xy": each head's values add a learned linear map (zero at
  # initialisation) of the token's fixed patch-centre coordinates (x, y in
  # [-1, 1]; the [CLS] token's are 0), so a head's output holds the mean
  # position of what it attends to, exactly, whatever the encoder kept.
  cross_pos: str = "none"
  # Decoder blocks from this index on start as the identity (their attention
  # and MLP output projections at zero): a decoder grown from a shallower
  # run's parameters (config.init_from_partial) starts computing its
  # function. A value >= dec_depth (the default) leaves every block random.
  dec_identity_from: int = 1_000_000
  # ALiBi in the decoder's self-attention (DecoderBlock.alibi), beside the
  # learned absolute positions: heads that prefer the nearest words, so the
  # words of a phrase can be read apart from an earlier phrase's.
  dec_alibi: bool = False
  # Early fusion: this many blocks in which the image tokens read the
  # prompt (the text up to its first <sep>) before the decoder reads them
  # (decoder.FusionBlock): each block lets the tokens attend to the prompt's
  # words, then to each other, then an MLP, every output projection zero at
  # first, so a model that gains the blocks computes what it did without
  # them. The decoder's cross-attention keys and values then depend on the
  # prompt: decoding computes them from the prompt buffer.
  fusion_depth: int = 0
  # The tokenizers' <sep> id (r3jax.data.tokenizer.SPECIALS): where a
  # prompt ends, for fusion_depth > 0.
  sep_id: int = 2
  # A learned [CLS] token before the image tokens, with its own position (P + 1
  # tokens reach the decoder), and the exact (erf) GELU instead of the tanh
  # approximation in the encoder's MLPs: what Hugging Face ViT checkpoints
  # compute (big_vision's "tok" pooling has the token but the tanh GELU).
  # r3jax/model/pretrained.py loads such weights.
  cls_token: bool = False
  enc_gelu: str = "tanh"
  # LayerNorm's backward pass in closed form (layers.layer_norm) rather than
  # autodiff's: the same gradients to float tolerance, a faster step on CPU.
  ln_custom_vjp: bool = True
  # jax.nn.dot_product_attention's implementation: "auto" (cuDNN's fused
  # flash attention on GPUs where it applies, else XLA's), "xla", "cudnn".
  attention: str = "auto"

  def __post_init__(self):
    ints = ("vocab_size", "image_size", "patch_size", "enc_width", "enc_depth",
            "enc_heads", "enc_mlp", "dec_width", "dec_depth", "dec_heads",
            "dec_mlp", "max_len")
    for name in ints:
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}.")
    for part in ("enc", "dec"):
      width = getattr(self, f"{part}_width")
      heads = getattr(self, f"{part}_heads")
      if width % heads:
        raise ValueError(
            f"ModelConfig.{part}_width={width} is not divisible by "
            f"{part}_heads={heads}.")
    if self.stem not in ("patch", "conv"):
      raise ValueError(f"stem must be 'patch' or 'conv', got {self.stem!r}.")
    if self.stem == "conv" and (self.patch_size < 4 or
                                self.patch_size & (self.patch_size - 1)):
      raise ValueError("stem='conv' needs a power-of-two patch_size >= 4, got "
                       f"{self.patch_size}.")
    if not isinstance(self.stem_convs, int) or self.stem_convs < 0 or (
        self.stem_convs and self.stem != "conv"):
      raise ValueError(f"stem_convs must be an int >= 0, and 0 unless "
                       f"stem='conv'; got {self.stem_convs!r} with stem "
                       f"{self.stem!r}.")
    if self.pos_init not in POS_INITS:
      raise ValueError(f"pos_init must be one of {POS_INITS}, got "
                       f"{self.pos_init!r}.")
    if not isinstance(self.dec_identity_from, int) or self.dec_identity_from < 0:
      raise ValueError(f"dec_identity_from must be an int >= 0, got "
                       f"{self.dec_identity_from!r}.")
    if not isinstance(self.fusion_depth, int) or self.fusion_depth < 0:
      raise ValueError(f"fusion_depth must be an int >= 0, got "
                       f"{self.fusion_depth!r}.")
    if not isinstance(self.dec_alibi, bool):
      raise ValueError(f"ModelConfig.dec_alibi must be a bool, got "
                       f"{self.dec_alibi!r}.")
    if self.cross_pos not in CROSS_POS:
      raise ValueError(f"cross_pos must be one of {CROSS_POS}, got "
                       f"{self.cross_pos!r}.")
    if self.pos_init == "sincos2d" and self.enc_width % 4:
      raise ValueError(f"pos_init='sincos2d' needs enc_width divisible by 4, "
                       f"got {self.enc_width}.")
    if self.enc_gelu not in ("tanh", "erf"):
      raise ValueError(f"enc_gelu must be 'tanh' or 'erf', got {self.enc_gelu!r}.")
    if self.attention not in ATTENTION:
      raise ValueError(f"attention must be one of {ATTENTION}, got "
                       f"{self.attention!r}.")
    if not isinstance(self.ln_custom_vjp, bool):
      raise ValueError(f"ModelConfig.ln_custom_vjp must be a bool, got "
                       f"{self.ln_custom_vjp!r}.")
    if not isinstance(self.cls_token, bool):
      raise ValueError(f"ModelConfig.cls_token must be a bool, got "
                       f"{self.cls_token!r}.")
    if self.image_size % self.patch_size:
      raise ValueError(
          f"ModelConfig.image_size={self.image_size} is not divisible by "
          f"patch_size={self.patch_size}.")
    if not isinstance(self.remat, str) or self.remat not in REMAT_POLICIES:
      raise ValueError(
          f"ModelConfig.remat={self.remat!r} is not a remat policy; expected one "
          f"of {list(REMAT_POLICIES)} (formerly False = 'none', True = 'full').")
    if not isinstance(self.scan_layers, bool):
      raise ValueError(
          f"ModelConfig.scan_layers must be a bool, got {self.scan_layers!r}.")
    if self.dtype not in _DTYPES:
      raise ValueError(
          f"ModelConfig.dtype={self.dtype!r}; expected one of {sorted(_DTYPES)}.")

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(_DTYPES[self.dtype])

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def num_image_tokens(self) -> int:
    """Tokens the encoder gives the decoder: the patches and the [CLS] token."""
    return self.num_patches + self.cls_token

  @classmethod
  def from_names(cls, encoder: str, *,
                 decoder: str | dict[str, int] | None = None,
                 **overrides: Any) -> ModelConfig:
    """Builds a config from named sizes; see the module docstring."""
    name, _, patch = encoder.partition("/")
    enc = dict(zip(("width", "depth", "heads", "mlp"), _size(name)))
    if isinstance(decoder, str):
      dec = dict(zip(("width", "depth", "heads", "mlp"), _size(decoder)))
    else:
      decoder = dict(decoder or {})
      unknown = set(decoder) - {"width", "depth", "heads", "mlp"}
      if unknown:
        raise ValueError(f"Unknown decoder size keys {sorted(unknown)}; expected "
                         "some of width, depth, heads, mlp.")
      dec = dict(enc)
      if "width" in decoder and "mlp" not in decoder:
        dec["mlp"] = 4 * decoder["width"]
      dec.update(decoder)
    fields = {f"enc_{k}": v for k, v in enc.items()}
    fields |= {f"dec_{k}": v for k, v in dec.items()}
    if patch:
      if not patch.isdigit():
        raise ValueError(f"Bad patch size in encoder name {encoder!r}; "
                         "expected e.g. 'B/16'.")
      fields["patch_size"] = int(patch)
    fields.update(overrides)
    return cls(**fields)


def _size(name: str) -> tuple[int, int, int, int]:
  if name not in VIT_SIZES:
    raise ValueError(f"Unknown size {name!r}; expected one of {list(VIT_SIZES)}.")
  return VIT_SIZES[name]
