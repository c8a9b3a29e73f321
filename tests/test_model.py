"""Model shapes, dtypes, parameter metadata, causality and configuration."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r3jax.model import VIT_SIZES, Model, ModelConfig

ALLOWED_NAMES = {"embed", "mlp", "heads", "kv", "vocab", "patch", "pos", None}


def tiny_config(**overrides) -> ModelConfig:
  fields = dict(vocab_size=13, image_size=16, patch_size=8, enc_width=32,
                enc_depth=2, enc_heads=2, enc_mlp=64, dec_width=16, dec_depth=2,
                dec_heads=2, dec_mlp=32, max_len=12)
  return ModelConfig(**(fields | overrides))


def make_model(cfg: ModelConfig, seed: int = 0, random_head: bool = True) -> Model:
  with nnx.use_eager_sharding(False):
    model = Model(cfg, rngs=nnx.Rngs(seed))
  if random_head:  # The zero-initialised head would hide everything upstream.
    head = model.decoder.head
    head.kernel[...] = jax.random.normal(jax.random.key(seed + 1), head.kernel.shape)
  return model


def random_inputs(cfg: ModelConfig, batch: int = 2, length: int = 6, seed: int = 0):
  k_img, k_tok = jax.random.split(jax.random.key(seed))
  images = jax.random.randint(k_img, (batch, cfg.image_size, cfg.image_size, 3), 0,
                              256).astype(jnp.uint8)
  tokens = jax.random.randint(k_tok, (batch, length), 0, cfg.vocab_size)
  return images, tokens


def params(model: Model) -> list[tuple[str, nnx.Param]]:
  return [("/".join(map(str, path)), var)
          for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))]


def test_shapes_and_zero_head():
  cfg = tiny_config()
  model = make_model(cfg, random_head=False)
  images, tokens = random_inputs(cfg, batch=3, length=5)
  img = model.encode(images)
  assert img.shape == (3, cfg.num_patches, cfg.dec_width)
  logits = model.decode(img, tokens)
  assert logits.shape == (3, 5, cfg.vocab_size)
  assert logits.dtype == jnp.float32
  np.testing.assert_array_equal(logits, 0.0)  # Zero-initialised head.
  np.testing.assert_array_equal(model(images, tokens), logits)


def test_same_width_has_no_projection():
  cfg = tiny_config(dec_width=32, dec_heads=2)
  model = make_model(cfg)
  assert model.img_proj is None
  assert not any(name.startswith("img_proj") for name, _ in params(model))
  assert model.encode(random_inputs(cfg)[0]).shape == (2, cfg.num_patches, 32)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  cfg = tiny_config(dtype="bfloat16")
  model = make_model(cfg)
  assert all(var.dtype == jnp.float32 for _, var in params(model))
  images, tokens = random_inputs(cfg)
  img = model.encode(images)
  assert img.dtype == jnp.bfloat16
  logits = model.decode(img, tokens)
  assert logits.dtype == jnp.float32
  f32 = make_model(dataclasses.replace(cfg, dtype="float32"))
  np.testing.assert_allclose(logits, f32(images, tokens), atol=0.3, rtol=0.1)


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_every_param_has_allowed_logical_names(stem):
  model = make_model(tiny_config(stem=stem))
  named = params(model)
  assert len(named) > 50
  for name, var in named:
    names = var.get_metadata().get("out_sharding")
    assert names is not None, name
    assert len(names) == var.ndim, (name, names, var.shape)
    assert set(names) <= ALLOWED_NAMES, (name, names)
  by_name = dict(named)
  assert by_name["decoder/blocks/0/self_attn/query/kernel"].get_metadata()[
      "out_sharding"] == ("embed", "heads", "kv")
  assert by_name["decoder/blocks/1/cross_attn/out/kernel"].get_metadata()[
      "out_sharding"] == ("heads", "kv", "embed")
  assert by_name["encoder/blocks/0/mlp/fc2/kernel"].get_metadata()[
      "out_sharding"] == ("mlp", "embed")
  assert by_name["decoder/tok_embed"].get_metadata()["out_sharding"] == (
      "vocab", "embed")
  assert by_name["decoder/head/kernel"].get_metadata()["out_sharding"] == (
      "embed", "vocab")


@pytest.mark.parametrize("t", [0, 3, 5])
def test_decoder_is_causal(t):
  cfg = tiny_config()
  model = make_model(cfg)
  images, tokens = random_inputs(cfg, length=6)
  changed = tokens.at[:, t].set((tokens[:, t] + 1) % cfg.vocab_size)
  img = model.encode(images)
  before, after = model.decode(img, tokens), model.decode(img, changed)
  np.testing.assert_array_equal(before[:, :t], after[:, :t])
  diff_BxL = jnp.abs(before - after).max(-1)
  assert bool(jnp.all(diff_BxL[:, t:] > 1e-6)), diff_BxL


def test_logits_depend_on_image():
  cfg = tiny_config()
  model = make_model(cfg)
  images, tokens = random_inputs(cfg)
  other = 255 - images
  diff = jnp.abs(model(images, tokens) - model(other, tokens)).max(-1)
  assert bool(jnp.all(diff > 1e-4)), diff


def test_uint8_and_float_images_agree():
  cfg = tiny_config()
  model = make_model(cfg)
  images, tokens = random_inputs(cfg)
  floats = images.astype(jnp.float32) / 127.5 - 1.0
  np.testing.assert_allclose(model.encode(images), model.encode(floats), atol=1e-6)
  np.testing.assert_allclose(model(images, tokens), model(floats, tokens), atol=1e-5)


def _shapes(state) -> dict:
  return {path: (v.shape, v.dtype) for path, v in nnx.to_flat_state(state)}


def test_abstract_construction_matches_concrete():
  cfg = tiny_config()
  concrete = _shapes(nnx.state(make_model(cfg, random_head=False)))
  build = lambda: Model(cfg, rngs=nnx.Rngs(0))
  with nnx.use_eager_sharding(False):
    _, via_jax = jax.eval_shape(lambda: nnx.split(build()))
    via_nnx = nnx.state(nnx.eval_shape(build))
  assert _shapes(via_jax) == concrete
  assert _shapes(via_nnx) == concrete
  # Eager sharding under a mesh resolves every logical name through the rules.
  mesh = jax.make_mesh((1,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
  rules = [("embed", "fsdp")] + [(n, None) for n in ALLOWED_NAMES - {"embed", None}]
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    sharded = nnx.state(nnx.eval_shape(build))
  assert _shapes(sharded) == concrete
  kernel = sharded["decoder"]["blocks"][0]["mlp"]["fc1"]["kernel"].get_value()
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)


def test_named_sizes():
  assert VIT_SIZES["Ti"] == (192, 12, 3, 768)
  assert VIT_SIZES["S"] == (384, 12, 6, 1536)
  assert VIT_SIZES["B"] == (768, 12, 12, 3072)
  assert VIT_SIZES["L"] == (1024, 24, 16, 4096)
  cfg = ModelConfig.from_names("S/16", decoder=dict(width=256, depth=4, heads=4),
                               vocab_size=100, max_len=20, image_size=224)
  assert (cfg.enc_width, cfg.enc_depth, cfg.enc_heads, cfg.enc_mlp) == VIT_SIZES["S"]
  assert (cfg.dec_width, cfg.dec_depth, cfg.dec_heads, cfg.dec_mlp) == (256, 4, 4, 1024)
  assert cfg.patch_size == 16 and cfg.num_patches == 196
  same = ModelConfig.from_names("Ti", decoder="mu", vocab_size=10, max_len=8)
  assert same.patch_size == 8 and same.dec_width == VIT_SIZES["mu"][0]
  assert ModelConfig.from_names("B", vocab_size=10, max_len=8).dec_depth == 12


def test_vit_b16_encoder_param_count():
  cfg = ModelConfig.from_names("B/16", decoder="mu", vocab_size=10, max_len=8,
                               image_size=224)
  with nnx.use_eager_sharding(False):
    state = nnx.state(nnx.eval_shape(lambda: Model(cfg, rngs=nnx.Rngs(0))))
  count = sum(int(np.prod(v.shape)) for path, v in nnx.to_flat_state(state)
              if path[0] == "encoder")
  d, f, layers = 768, 3072, 12
  block = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
  expected = (16 * 16 * 3 * d + d) + 196 * d + layers * block + 2 * d
  assert count == expected
  assert abs(count - 85.8e6) < 0.05e6, count


@pytest.mark.parametrize("overrides, message", [
    (dict(enc_width=30, enc_heads=4), "enc_width=30 is not divisible by enc_heads=4"),
    (dict(dec_width=16, dec_heads=3), "dec_width=16 is not divisible by dec_heads=3"),
    (dict(image_size=20), "image_size=20 is not divisible by patch_size=8"),
    (dict(dtype="float16"), "dtype='float16'"),
    (dict(max_len=0), "max_len must be a positive int"),
    (dict(stem="cnn"), "stem must be 'patch' or 'conv'"),
    (dict(attention="flash"), "attention must be one of"),
    (dict(ln_custom_vjp=1), "ln_custom_vjp must be a bool"),
    (dict(stem="conv", patch_size=2, image_size=16),
     "power-of-two patch_size >= 4"),
])
def test_config_validation(overrides, message):
  with pytest.raises(ValueError, match=message):
    tiny_config(**overrides)


def test_from_names_validation():
  with pytest.raises(ValueError, match="Unknown size 'XL'"):
    ModelConfig.from_names("XL/16", vocab_size=10, max_len=8)
  with pytest.raises(ValueError, match="Unknown decoder size keys"):
    ModelConfig.from_names("Ti", decoder=dict(layers=2), vocab_size=10, max_len=8)
  with pytest.raises(ValueError, match="Bad patch size"):
    ModelConfig.from_names("Ti/x", vocab_size=10, max_len=8)


def test_too_long_sequence_is_rejected():
  cfg = tiny_config()
  model = make_model(cfg)
  images, tokens = random_inputs(cfg, length=cfg.max_len + 1)
  with pytest.raises(ValueError, match="exceeds the model's max_len=12"):
    model(images, tokens)


def test_conv_stem_makes_the_same_tokens_and_sees_local_structure():
  cfg = tiny_config(stem="conv", image_size=32, patch_size=8)
  model = make_model(cfg)
  images, tokens = random_inputs(cfg)
  img = model.encode(images)
  assert img.shape == (2, cfg.num_patches, cfg.dec_width)
  # Changing one pixel changes only tokens whose receptive field covers it.
  stem = model.encoder.conv_stem
  x = images.astype(jnp.float32) / 127.5 - 1
  y = x.at[:, 0, 0, :].set(1.0)
  diff = np.abs(np.asarray(stem(y) - stem(x))).sum(-1)
  assert (diff[:, 0] > 0).all() and (diff[:, 1:] == 0).all()
  # An extra convolution widens a token's view by half a patch each side:
  # pixel (7, 7), at patch 0's corner, then reaches the tokens of the next
  # patch row and column too, where the plain stem keeps it in token 0.
  y = x.at[:, 7, 7, :].set(1.0)
  diff = np.abs(np.asarray(stem(y) - stem(x))).sum(-1)
  assert (diff[:, 0] > 0).all() and (diff[:, 1:] == 0).all()
  wide = make_model(tiny_config(stem="conv", image_size=32, patch_size=8,
                                stem_convs=1)).encoder.conv_stem
  diff = np.abs(np.asarray(wide(y) - wide(x))).sum(-1).reshape(2, 4, 4)
  assert (diff[:, :2, :2] > 0).all()
  assert (diff[:, 2:] == 0).all() and (diff[:, :, 2:] == 0).all()
  with pytest.raises(ValueError, match="0 unless stem='conv'"):
    tiny_config(stem_convs=1)


def test_fewer_images_than_texts_encode_once_and_repeat():
  """Model(images_I, tokens_B): text rows i*k .. i*k+k-1 read image i."""
  cfg = tiny_config()
  model = make_model(cfg)
  images, tokens = random_inputs(cfg, batch=6)
  few = images[:2]
  want = model(jnp.repeat(few, 3, axis=0), tokens)
  np.testing.assert_array_equal(np.asarray(model(few, tokens)),
                                np.asarray(want))
  with pytest.raises(ValueError, match="6 text rows cannot share 4 images"):
    model(images[:4], tokens)


@pytest.mark.parametrize("cls_token", [False, True])
def test_sincos2d_positions_code_column_and_row(cls_token):
  """pos_init="sincos2d" starts the encoder's positions at the 2-D sine-cosine
  code: for the patch in row r, column c, channel k < D/4 is sin(c * w_k),
  then cos(c * w_k), sin(r * w_k), cos(r * w_k), w_k = 10000^(-k / (D/4))."""
  cfg = tiny_config(pos_init="sincos2d", image_size=32, patch_size=8,
                    cls_token=cls_token)
  pos = np.asarray(make_model(cfg).encoder.pos_embed[...])
  side, width = 4, cfg.enc_width
  assert pos.shape == (side * side + cls_token, width)
  if cls_token:
    assert (pos[0] == 0).all()
    pos = pos[1:]
  q = width // 4
  for r in range(side):
    for c in range(side):
      for k in range(q):
        w = 10000.0 ** (-k / q)
        want = [np.sin(c * w), np.cos(c * w), np.sin(r * w), np.cos(r * w)]
        np.testing.assert_allclose(pos[r * side + c, k::q], want, atol=1e-6)
  # The default stays a random start (std width ** -0.5).
  normal = np.asarray(make_model(tiny_config()).encoder.pos_embed[...])
  assert abs(normal.std() - width ** -0.5) < 0.3 * width ** -0.5
  with pytest.raises(ValueError, match="pos_init must be one of"):
    tiny_config(pos_init="rope")


def test_layer_norm_closed_form_gradient():
  """layers.layer_norm's custom backward against finite differences and
  against autodiff of the same forward, for float32 and bfloat16 inputs."""
  from jax.test_util import check_grads
  from r3jax.model.layers import _layer_norm, layer_norm
  keys = jax.random.split(jax.random.key(0), 4)
  x = 3.0 * jax.random.normal(keys[0], (2, 5, 16)) + 1.0
  scale = 1.0 + 0.3 * jax.random.normal(keys[1], (16,))
  bias = 0.1 * jax.random.normal(keys[2], (16,))
  g = jax.random.normal(keys[3], (2, 5, 16))
  check_grads(lambda *a: layer_norm(*a, 1e-6), (x, scale, bias), order=1,
              modes=["rev"], atol=1e-2, rtol=1e-2)
  for dtype in (jnp.float32, jnp.bfloat16):
    xd = x.astype(dtype)
    want = jax.vjp(lambda *a: _layer_norm(*a, 1e-6), xd, scale, bias)[1](g)
    got = jax.vjp(lambda *a: layer_norm(*a, 1e-6), xd, scale, bias)[1](g)
    assert got[0].dtype == dtype
    for w, h in zip(want, got):
      np.testing.assert_allclose(np.asarray(h, np.float32),
                                 np.asarray(w, np.float32), rtol=2e-5,
                                 atol=2e-5 if dtype == jnp.float32 else 5e-2)


def test_layer_norm_custom_vjp_switch_keeps_gradients():
  """model.ln_custom_vjp changes how the gradient is computed, not what it is."""
  grads = []
  for custom in (True, False):
    cfg = tiny_config(ln_custom_vjp=custom)
    model = make_model(cfg)
    images, tokens = random_inputs(cfg)
    graphdef, state = nnx.split(model)

    def loss(state):
      logits = nnx.merge(graphdef, state)(images, tokens)
      return jnp.mean(jax.nn.log_softmax(logits)[..., 1])

    grads.append(jax.grad(loss)(state))
  flat = [jax.tree.leaves(g) for g in grads]
  assert len(flat[0]) == len(flat[1])
  for a, b in zip(*flat):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("implementation", ["auto", "xla"])
def test_attention_matches_a_plain_softmax_reference(implementation):
  """Attention.attend (jax.nn.dot_product_attention with the configured
  implementation) against softmax(q k^T / sqrt(K)) v written out, with a
  boolean mask and causally."""
  from r3jax.model.layers import Attention
  with nnx.use_eager_sharding(False):
    attn = Attention(16, 2, rngs=nnx.Rngs(0), dtype=jnp.float32,
                     implementation=implementation)
  keys = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(keys[0], (2, 5, 16))
  ctx = jax.random.normal(keys[1], (2, 7, 16))
  mask = jax.random.bernoulli(keys[2], 0.7, (2, 1, 5, 7)).at[..., 0].set(True)

  def reference(x, ctx, mask):
    q, (k, v) = attn.query(x), attn.kv(ctx)
    s = jnp.einsum("blnk,bsnk->bnls", q, k) / np.sqrt(q.shape[-1])
    p = jax.nn.softmax(jnp.where(mask, s, -jnp.inf), axis=-1)
    return attn.out(jnp.einsum("bnls,bsnk->blnk", p, v))

  k, v = attn.kv(ctx)
  np.testing.assert_allclose(attn.attend(x, k, v, mask=mask),
                             reference(x, ctx, mask), atol=1e-5)
  causal = jnp.tril(jnp.ones((5, 5), bool))[None, None]
  np.testing.assert_allclose(attn(x, is_causal=True), reference(x, x, causal),
                             atol=1e-5)


@pytest.mark.parametrize("cls_token", [False, True])
def test_cross_pos_xy_starts_as_a_no_op_and_adds_the_patch_positions(cls_token):
  """cross_pos="xy" adds to each head's cross-attention values a linear map
  of the image token's patch centre (x, y), zero at initialisation: with the
  other parameters of a model without it, the logits are the same bit for
  bit; with a map W the values grow by xy @ W exactly, and the KV-cache
  decoding path and the scanned layout compute what teacher forcing does."""
  from r3jax.model import pyloop_to_scan
  from r3jax.model.decoder import grid_xy
  xy = np.asarray(grid_xy(4 + cls_token, cls_token))
  want = [[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]]  # row-major
  np.testing.assert_array_equal(xy, [[0, 0]] * cls_token + want)
  with pytest.raises(ValueError, match="not a square grid"):
    grid_xy(5 + cls_token, cls_token)
  base_cfg = tiny_config(image_size=16, patch_size=8, cls_token=cls_token)
  cfg = dataclasses.replace(base_cfg, cross_pos="xy")
  base, model = make_model(base_cfg), make_model(cfg)
  nnx.update(model, nnx.state(base, nnx.Param))
  images, tokens = random_inputs(cfg, batch=3, length=7)
  np.testing.assert_array_equal(model(images, tokens), base(images, tokens))
  block, base_block = model.decoder.blocks[0], base.decoder.blocks[0]
  assert block.xy_value.shape == (2, cfg.dec_heads, cfg.dec_width // cfg.dec_heads)
  block.xy_value[...] = jax.random.normal(jax.random.key(3), block.xy_value.shape)
  img = model.encode(images)
  _, v = block.cross_kv(img)
  _, v0 = base_block.cross_kv(img)
  offset = np.einsum("pc,cnk->pnk", xy, block.xy_value[...])
  np.testing.assert_allclose(v - v0, np.broadcast_to(offset, v.shape),
                             atol=1e-6)
  full = model.decode(img, tokens)
  assert not np.allclose(full, base.decode(img, tokens))
  cache, cross_kv, pieces = model.init_cache(3), model.cross_kv(img), []
  for start in range(tokens.shape[1]):
    logits, cache = model.decode_step(cross_kv, cache,
                                      tokens[:, start:start + 1], start)
    pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, atol=1e-5)
  scanned_cfg = dataclasses.replace(cfg, scan_layers=True)
  scanned = make_model(scanned_cfg)
  nnx.update(scanned, pyloop_to_scan(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
  np.testing.assert_allclose(scanned(images, tokens), model(images, tokens),
                             atol=1e-5)
  with pytest.raises(ValueError, match="cross_pos must be one of"):
    tiny_config(cross_pos="rope")


def test_a_decoder_grown_with_identity_blocks_computes_the_shallower_model():
  """dec_identity_from=k: blocks k.. start with zero output projections, so
  a deeper decoder given a shallower model's parameters for blocks 0..k-1
  (config.init_from_partial) computes its logits; the new blocks' other
  parameters are random, and they learn."""
  shallow_cfg = tiny_config(dec_depth=2)
  deep_cfg = tiny_config(dec_depth=4, dec_identity_from=2)
  shallow, deep = make_model(shallow_cfg), make_model(deep_cfg)
  new = deep.decoder.blocks[2]
  for branch in (new.self_attn.out, new.cross_attn.out, new.mlp.fc2):
    assert not np.any(branch.kernel[...])
  assert np.any(new.mlp.fc1.kernel[...]) and np.any(
      deep.decoder.blocks[1].mlp.fc2.kernel[...])
  nnx.update(deep, nnx.state(shallow, nnx.Param))
  images, tokens = random_inputs(deep_cfg, batch=2, length=6)
  np.testing.assert_allclose(deep(images, tokens), shallow(images, tokens),
                             atol=1e-6)
  loss = lambda m: jnp.mean(m(images, tokens) ** 2)
  grads = nnx.grad(loss)(deep)
  assert np.any(grads.decoder.blocks[3].mlp.fc2.kernel[...])
  with pytest.raises(ValueError, match="dec_identity_from must be an int >= 0"):
    tiny_config(dec_identity_from=-1)


def test_decoder_alibi_biases_self_attention_by_distance_in_both_paths():
  """dec_alibi: learned per-head slopes starting at 2^(-8h/N); teacher
  forcing, KV-cache decoding (scalar and per-row starts) and the scanned
  layout agree, and zero slopes compute the model without ALiBi."""
  from r3jax.model import pyloop_to_scan
  cfg = tiny_config(dec_alibi=True, dec_heads=4)
  model = make_model(cfg)
  np.testing.assert_allclose(model.decoder.blocks[0].alibi[...],
                             [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8], rtol=1e-6)
  base = make_model(dataclasses.replace(cfg, dec_alibi=False))
  images, tokens = random_inputs(cfg, batch=3, length=8)
  img = model.encode(images)
  full = model.decode(img, tokens)
  shared = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  for block in shared["decoder"]["blocks"].values():
    del block["alibi"]
  state = nnx.state(base, nnx.Param)
  nnx.replace_by_pure_dict(state, shared)
  nnx.update(base, state)
  assert not np.allclose(full, base.decode(img, tokens), atol=1e-4)
  cache, cross_kv, pieces = model.init_cache(3), model.cross_kv(img), []
  for start, size in ((0, 3), (3, 1), (4, 4)):
    logits, cache = model.decode_step(cross_kv, cache,
                                      tokens[:, start:start + size], start)
    pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, atol=1e-5)
  # Rows at their own positions: row r's prompt has r + 2 tokens.
  cache = model.init_cache(3)
  starts = jnp.array([2, 3, 4])
  for r in range(3):  # prefill each row's prompt at once
    one = jax.tree.map(lambda c: c[r:r + 1], cache)
    _, one = model.decode_step([(k[r:r + 1], v[r:r + 1]) for k, v in cross_kv],
                               one, tokens[r:r + 1, :r + 2], 0)
    cache = jax.tree.map(lambda c, o: c.at[r:r + 1].set(o), cache, one)
  nxt = tokens[jnp.arange(3), starts][:, None]
  logits, _ = model.decode_step(cross_kv, cache, nxt, starts)
  np.testing.assert_allclose(logits[:, 0], full[jnp.arange(3), starts],
                             atol=1e-5)
  scanned = make_model(dataclasses.replace(cfg, scan_layers=True))
  nnx.update(scanned, pyloop_to_scan(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
  np.testing.assert_allclose(scanned(images, tokens), model(images, tokens),
                             atol=1e-5)
  for block in model.decoder.blocks:
    block.alibi[...] = jnp.zeros_like(block.alibi[...])
  np.testing.assert_allclose(model.decode(img, tokens), base.decode(img, tokens),
                             atol=1e-6)


def test_early_fusion_starts_as_a_no_op_reads_only_the_prompt_and_decodes():
  """fusion_depth: image tokens read the prompt (up to its first <sep>)
  before the decoder reads them. At initialisation the blocks are the
  identity (the logits of the model without them, with its parameters);
  trained, the image tokens depend on the prompt's words and on nothing
  after the <sep>; KV-cache decoding, with the keys and values computed
  from the prompt buffer, equals greedy decoding by teacher forcing."""
  from r3jax.data.tokenizer import SEP, SPECIALS
  from r3jax.model.decoding import generate, generate_recompute
  sep = SPECIALS.index(SEP)
  base_cfg = tiny_config(dec_heads=2, max_len=12)
  assert base_cfg.sep_id == sep
  cfg = dataclasses.replace(base_cfg, fusion_depth=2)
  base, model = make_model(base_cfg), make_model(cfg)
  nnx.update(model, nnx.state(base, nnx.Param))
  images, tokens = random_inputs(cfg, batch=3, length=8)
  tokens = jnp.where(tokens == sep, 4, tokens).at[:, 4].set(sep)
  np.testing.assert_array_equal(model(images, tokens), base(images, tokens))
  for block in model.decoder.fusion:  # as if trained
    for branch in (block.read.out, block.self_attn.out, block.mlp.fc2):
      branch.kernel[...] = 0.3 * jax.random.normal(
          jax.random.key(7), branch.kernel.shape)
  img = model.encode(images)
  fused = model.decoder.fuse(img, tokens)
  assert not np.allclose(fused, img, atol=1e-3)
  after = (tokens[:, 5:] + 1) % cfg.vocab_size
  later = tokens.at[:, 5:].set(jnp.where(after == sep, 4, after))
  np.testing.assert_array_equal(model.decoder.fuse(img, later), fused)
  other = tokens.at[:, 2].set((tokens[:, 2] + 1) % cfg.vocab_size)
  other = jnp.where(other == sep, 4, other)
  assert not np.allclose(model.decoder.fuse(img, other), fused, atol=1e-4)
  np.testing.assert_array_equal(
      model.decoder.prompt_mask(jnp.array([[1, 5, sep, 6, sep], [1, 5, 6, 7, 8]])),
      [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
  with pytest.raises(ValueError, match="fusion blocks needs the prompt"):
    model.cross_kv(img)
  # Prompts of 3, 4 and 5 tokens, each ending at its <sep>.
  lens = jnp.array([3, 4, 5])
  prompt = jnp.where(jnp.arange(5)[None] == lens[:, None] - 1, sep,
                     jnp.where(tokens[:, :5] == sep, 4, tokens[:, :5]))
  prompt = jnp.where(jnp.arange(5)[None] < lens[:, None], prompt, 0)
  kw = dict(max_len=cfg.max_len, eos_id=1, pad_id=0)
  got = generate(model, images, prompt, lens, prefill_len=3, **kw)
  want = generate_recompute(model, images, prompt, lens, **kw)
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_array_equal(got.gen_len, want.gen_len)
  with pytest.raises(ValueError, match="fusion_depth must be an int >= 0"):
    tiny_config(fusion_depth=-1)
