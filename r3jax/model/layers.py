"""Building blocks shared by the image encoder and the text decoder.

Dimensions:
  B: batch             L: query length        S: key/value length
  D: width             N: attention heads     K: head dim (D / N)
  F: MLP hidden width

Parameters are float32 and carry logical axis names (r3jax/sharding.py); compute runs
in the module's `dtype`, but LayerNorm statistics and softmax run in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from r3jax.model.config import REMAT_POLICIES
from r3jax.sharding import constrain

Initializer = Callable[..., jax.Array]
Names = Sequence[str | None]
ACT_BxLxD = ("act_batch", "act_len", "act_embed")


def param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int],
          names: Names) -> nnx.Param:
  """A float32 parameter annotated with its logical axis names."""
  init = nnx.with_partitioning(init, tuple(names))
  return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32))


class Dense(nnx.Module):
  """Contracts the trailing `len(in_shape)` dims of x with a (in..., out...) kernel."""

  def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int],
               in_names: Names, out_names: Names, *, rngs: nnx.Rngs,
               dtype: jnp.dtype, kernel_init: Initializer | None = None,
               out_dtype: jnp.dtype | None = None):
    n_in, n_out = len(in_shape), len(out_shape)
    if kernel_init is None:  # Xavier-uniform over the grouped in/out dims.
      kernel_init = nnx.initializers.variance_scaling(
          1.0, "fan_avg", "uniform", in_axis=tuple(range(n_in)),
          out_axis=tuple(range(n_in, n_in + n_out)))
    self.kernel = param(rngs, kernel_init, (*in_shape, *out_shape),
                        (*in_names, *out_names))
    self.bias = param(rngs, nnx.initializers.zeros, out_shape, out_names)
    self.n_in = n_in
    self.dtype = dtype
    # The output head asks for float32 so that bfloat16 runs get full-precision logits.
    self.out_dtype = out_dtype or dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.tensordot(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                      axes=self.n_in, preferred_element_type=self.out_dtype)
    return y + self.bias[...].astype(self.out_dtype)


class LayerNorm(nnx.Module):
  """LayerNorm over the last dim with float32 statistics. With `custom_vjp`
  (the default) the backward pass is `layer_norm`'s closed form instead of
  autodiff's, the same gradients to float tolerance."""

  def __init__(self, width: int, *, rngs: nnx.Rngs, dtype: jnp.dtype,
               eps: float = 1e-6, custom_vjp: bool = True):
    self.scale = param(rngs, nnx.initializers.ones, (width,), ("embed",))
    self.bias = param(rngs, nnx.initializers.zeros, (width,), ("embed",))
    self.eps = eps
    self.dtype = dtype
    self.custom_vjp = custom_vjp

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    fn = layer_norm if self.custom_vjp else _layer_norm
    return fn(x_BxLxD, self.scale[...], self.bias[...], self.eps).astype(self.dtype)


def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float
                ) -> jax.Array:
  return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
  x32 = x.astype(jnp.float32)
  centred = x32 - x32.mean(-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.square(centred).mean(-1, keepdims=True) + eps)
  x_hat = centred * rstd
  # The zero-size array carries x's dtype to the backward pass.
  return x_hat * scale + bias, (x_hat, rstd, scale, jnp.zeros((0,), x.dtype))


def _layer_norm_bwd(eps, residuals, g):
  """With x_hat = (x - mean) * rstd and gs = g * scale (all over the last dim):
  dx = rstd * (gs - mean(gs) - x_hat * mean(gs * x_hat)),
  dscale = sum(g * x_hat), dbias = sum(g) over the leading dims."""
  del eps
  x_hat, rstd, scale, like = residuals
  g = g.astype(jnp.float32)
  gs = g * scale
  dx = rstd * (gs - gs.mean(-1, keepdims=True)
               - x_hat * (gs * x_hat).mean(-1, keepdims=True))
  lead = tuple(range(g.ndim - 1))
  return dx.astype(like.dtype), (g * x_hat).sum(lead), g.sum(lead)


# float32 LayerNorm whose gradient is the closed form above. Autodiff's
# backward is a long elementwise chain that XLA:CPU fuses into the transposes
# feeding the weight-gradient matmuls, reading ~40 inputs with a stride there:
# the closed form made the plain training step 1.4x faster on CPU
# (benchmarks/vs_pytorch.py).
layer_norm = jax.custom_vjp(_layer_norm, nondiff_argnums=(3,))
layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class Mlp(nnx.Module):
  """Two-layer GELU MLP (tanh-approximate GELU unless approximate=False)."""

  def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs, dtype: jnp.dtype,
               approximate: bool = True, out_init: Initializer | None = None):
    self.approximate = approximate
    self.fc1 = Dense((width,), (hidden,), ("embed",), ("mlp",), rngs=rngs,
                     dtype=dtype)
    self.fc2 = Dense((hidden,), (width,), ("mlp",), ("embed",), rngs=rngs,
                     dtype=dtype, kernel_init=out_init)

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    h_BxLxF = jax.nn.gelu(self.fc1(x_BxLxD), approximate=self.approximate)
    h_BxLxF = constrain(h_BxLxF, ("act_batch", "act_len", "act_mlp"))
    return self.fc2(h_BxLxF)


class Attention(nnx.Module):
  """Multi-head attention whose key/value projection can be computed separately, so
  that decoding can cache k/v (self-attention) or reuse them (cross-attention)."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs, dtype: jnp.dtype,
               implementation: str = "auto", out_init: Initializer | None = None):
    head_dim = width // heads
    # jax.nn.dot_product_attention's implementation: None lets it pick
    # (cuDNN's fused kernel on GPUs where supported, else XLA's).
    self.implementation = None if implementation == "auto" else implementation

    def proj() -> Dense:
      return Dense((width,), (heads, head_dim), ("embed",), ("heads", "kv"),
                   rngs=rngs, dtype=dtype)

    self.query, self.key, self.value = proj(), proj(), proj()
    self.out = Dense((heads, head_dim), (width,), ("heads", "kv"), ("embed",),
                     rngs=rngs, dtype=dtype, kernel_init=out_init)

  def kv(self, x_BxSxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys and values, each B x S x N x K."""
    return self.key(x_BxSxD), self.value(x_BxSxD)

  def attend(self, x_BxLxD: jax.Array, k_BxSxNxK: jax.Array, v_BxSxNxK: jax.Array,
             *, mask: jax.Array | None = None, is_causal: bool = False,
             bias: jax.Array | None = None) -> jax.Array:
    """Queries from x attend to the given keys/values.

    `mask` (True = attend) and `bias` (added to the scaled scores; float32)
    broadcast to B x N x L x S.
    """
    q_BxLxNxK = constrain(self.query(x_BxLxD),
                          ("act_batch", "act_len", "act_heads", None))
    if bias is not None:
      bias = bias.astype(q_BxLxNxK.dtype)
    y_BxLxNxK = jax.nn.dot_product_attention(
        q_BxLxNxK, k_BxSxNxK.astype(q_BxLxNxK.dtype),
        v_BxSxNxK.astype(q_BxLxNxK.dtype), bias=bias, mask=mask,
        is_causal=is_causal, implementation=self.implementation)
    return self.out(y_BxLxNxK)

  def attend_cached(self, x_BxLxD: jax.Array, k_BxNxSxK: jax.Array,
                    v_BxNxSxK: jax.Array, *, mask: jax.Array | None = None,
                    bias: jax.Array | None = None) -> jax.Array:
    """`attend` with keys and values held heads-first (decoding's caches).
    One query (a decode step) is written out: the products read that layout
    directly, where XLA would otherwise transpose the whole cache at every
    step. Several queries go through `attend`, whose fused kernel then pays
    for the transpose. `mask` broadcasts to B x N x L x S."""
    if x_BxLxD.shape[1] > 1:
      return self.attend(x_BxLxD, k_BxNxSxK.transpose(0, 2, 1, 3),
                         v_BxNxSxK.transpose(0, 2, 1, 3), mask=mask, bias=bias)
    q_BxLxNxK = self.query(x_BxLxD)
    scale = q_BxLxNxK.shape[-1] ** -0.5
    s_BxNxLxS = jnp.einsum("blnk,bnsk->bnls", q_BxLxNxK,
                           k_BxNxSxK.astype(q_BxLxNxK.dtype),
                           preferred_element_type=jnp.float32) * scale
    if bias is not None:
      s_BxNxLxS = s_BxNxLxS + bias
    if mask is not None:
      s_BxNxLxS = jnp.where(mask, s_BxNxLxS, jnp.finfo(jnp.float32).min)
    p_BxNxLxS = jax.nn.softmax(s_BxNxLxS, axis=-1).astype(q_BxLxNxK.dtype)
    y_BxLxNxK = jnp.einsum("bnls,bnsk->blnk", p_BxNxLxS,
                           v_BxNxSxK.astype(q_BxLxNxK.dtype))
    return self.out(y_BxLxNxK)

  def __call__(self, x_BxLxD: jax.Array, ctx_BxSxD: jax.Array | None = None, *,
               is_causal: bool = False, bias: jax.Array | None = None
               ) -> jax.Array:
    """Self-attention, or cross-attention to `ctx_BxSxD` when given."""
    k_BxSxNxK, v_BxSxNxK = self.kv(x_BxLxD if ctx_BxSxD is None else ctx_BxSxD)
    return self.attend(x_BxLxD, k_BxSxNxK, v_BxSxNxK, is_causal=is_causal,
                       bias=bias)


def maybe_remat(policy: str) -> Callable[..., jax.Array]:
  """`apply(block, *args)` calls the block, rematerialised in the backward pass
  under the named `REMAT_POLICIES` entry (trading compute for activation memory)."""

  def apply(block: nnx.Module, *args: jax.Array) -> jax.Array:
    return block(*args)

  if policy == "none":
    return apply
  return nnx.remat(apply, policy=REMAT_POLICIES[policy])
