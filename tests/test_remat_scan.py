"""Remat policies and scan over layers compute the plain model's function:
logits, gradients, KV-cache generation, and the trainer's groups and shardings."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r3jax import config as config_lib
from r3jax import sharding
from r3jax.interference import groups as groups_lib
from r3jax.model import (REMAT_POLICIES, Model, ModelConfig, pyloop_to_scan,
                         scan_to_pyloop)
from r3jax.model import scan
from r3jax.model.decoder import DecoderBlock
from r3jax.model.decoding import generate, generate_lookup
from r3jax.run import loop

# test_decoding's sizes, so that eager initialisation reuses its compiled ops.
CFG = ModelConfig(vocab_size=11, image_size=16, patch_size=8, enc_width=32,
                  enc_depth=2, enc_heads=2, enc_mlp=64, dec_width=16, dec_depth=2,
                  dec_heads=2, dec_mlp=32, max_len=12)
POLICIES = [name for name in REMAT_POLICIES if name != "none"]


def graphdef(**overrides) -> nnx.GraphDef:
  cfg = dataclasses.replace(CFG, **overrides)
  with nnx.use_eager_sharding(False):
    return nnx.graphdef(nnx.eval_shape(lambda: Model(cfg, rngs=nnx.Rngs(0))))


@functools.cache
def init_params(seed: int = 0, scan_layers: bool = False) -> dict:
  """Parameters initialised from `seed`, with a random (not zero) head."""
  with nnx.use_eager_sharding(False):
    model = Model(dataclasses.replace(CFG, scan_layers=scan_layers),
                  rngs=nnx.Rngs(seed))
  head = model.decoder.head.kernel
  head[...] = jax.random.normal(jax.random.key(seed + 1), head.shape)
  return nnx.to_pure_dict(nnx.state(model))


def inputs(batch: int = 2, length: int = 6):
  images = jax.random.randint(jax.random.key(0), (batch, 16, 16, 3), 0, 256)
  tokens = jax.random.randint(jax.random.key(1), (batch, length), 0, CFG.vocab_size)
  return images.astype(jnp.uint8), tokens


def assert_trees_close(a, b, tol=1e-5):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0],
                          jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol,
                               err_msg=jax.tree_util.keystr(path))


def test_layouts_share_init_and_convert_both_ways():
  plain = init_params()
  scanned = init_params(scan_layers=True)
  kernel = scanned["decoder"]["blocks"]["self_attn"]["query"]["kernel"]
  assert kernel.shape == (CFG.dec_depth, 16, 2, 8)
  # The stacked blocks are built from the plain layout's blocks: same init.
  jax.tree.map(np.testing.assert_array_equal, pyloop_to_scan(plain), scanned)
  back = scan_to_pyloop(scanned)
  jax.tree.map(np.testing.assert_array_equal, back, plain)
  assert list(back["encoder"]["blocks"]) == [0, 1]
  with pytest.raises(ValueError, match="already scanned"):
    pyloop_to_scan(scanned)
  with pytest.raises(ValueError, match="already in the plain layout"):
    scan_to_pyloop(plain)
  # Stacked parameters put the "layers" logical name in front; their slices
  # (decode steps) carry the per-layer names again.
  model = nnx.merge(graphdef(scan_layers=True), scanned)
  names = lambda v: v.get_metadata()["out_sharding"]
  assert names(model.decoder.blocks.self_attn.query.kernel) == (
      "layers", "embed", "heads", "kv")
  assert names(model.encoder.blocks.mlp.fc1.kernel) == ("layers", "embed", "mlp")
  layer1 = scan.unstack(model.decoder.blocks)[1]
  assert names(layer1.self_attn.query.kernel) == ("embed", "heads", "kv")
  np.testing.assert_array_equal(layer1.mlp.fc2.kernel[...],
                                plain["decoder"]["blocks"][1]["mlp"]["fc2"]["kernel"])


def test_sharding_by_logical_names_leaves_the_layers_axis_whole():
  mesh = jax.make_mesh((2,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:2])
  rules = [("embed", "fsdp"), ("layers", None), ("mlp", None), ("heads", None),
           ("kv", None), ("vocab", None), ("patch", None), ("pos", None)]
  cfg = dataclasses.replace(CFG, scan_layers=True)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    model = nnx.eval_shape(lambda: Model(cfg, rngs=nnx.Rngs(0)))
  kernel = model.encoder.blocks.mlp.fc1.kernel.get_value()
  assert kernel.shape == (CFG.enc_depth, 32, 64)
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)
  # The trainer's resolution (r3jax.sharding) maps the unnamed axis to None.
  shardings = sharding.state_shardings(nnx.state(model), mesh, rules[:1])
  spec = shardings["decoder"]["blocks"]["self_attn"]["query"]["kernel"].spec
  assert spec == jax.sharding.PartitionSpec(None, "fsdp", None, None)


def test_scanned_model_gives_the_plain_logits_and_gradients():
  images, tokens = inputs()
  plain = init_params()

  def loss_fn(graphdef):
    def loss(params):
      logits = nnx.merge(graphdef, params)(images, tokens)
      return jnp.mean(logits ** 2), logits
    return jax.jit(jax.value_and_grad(loss, has_aux=True))

  (loss, logits), grads = loss_fn(graphdef())(plain)
  (loss_s, logits_s), grads_s = loss_fn(graphdef(scan_layers=True))(
      pyloop_to_scan(plain))
  assert float(jnp.abs(logits).max()) > 0.1  # Not a degenerate comparison.
  np.testing.assert_allclose(logits_s, logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(loss_s, loss, rtol=1e-5)
  assert grads_s["decoder"]["blocks"]["mlp"]["fc1"]["kernel"].shape[0] == 2
  assert_trees_close(scan_to_pyloop(grads_s), grads)


@functools.cache
def block_gradients() -> dict:
  """Gradients of a loss over two decoder blocks with respect to their
  parameters (stacked), input and image tokens: the plain loop without remat
  ("reference"), the scanned blocks under every remat policy and the plain loop
  under "full" (the plain layout's policies are one nnx.remat call each, and
  test_remat_policies_keep_fewer_activations shows each in effect)."""
  with nnx.use_eager_sharding(False):
    rngs = nnx.Rngs(3)
    blocks = [DecoderBlock(16, 2, 32, rngs=rngs, dtype=jnp.float32)
              for _ in range(2)]
  plain_def, plain = nnx.split(nnx.List(blocks))
  stacked_def, stacked = nnx.split(scan.stack(blocks))
  plain, stacked = nnx.to_pure_dict(plain), nnx.to_pure_dict(stacked)
  k_x, k_img = jax.random.split(jax.random.key(4))
  x_BxLxD = jax.random.normal(k_x, (2, 5, 16))
  img_BxPxD = jax.random.normal(k_img, (2, 4, 16))

  def grads(scanned, remat, params, x, img):
    def loss(params, x, img):
      blocks = nnx.merge(stacked_def if scanned else plain_def, params)
      y = scan.run_blocks(blocks, x, img, remat=remat, scanned=scanned)
      return jnp.sum(jnp.sin(y))
    g_params, *rest = jax.grad(loss, argnums=(0, 1, 2))(params, x, img)
    if not scanned:
      g_params = jax.tree.map(lambda *xs: jnp.stack(xs), g_params[0], g_params[1])
    return g_params, *rest

  @jax.jit
  def run(plain, stacked, x, img):
    out = {"reference": grads(False, "none", plain, x, img),
           "plain/full": grads(False, "full", plain, x, img)}
    for remat in POLICIES:
      out[f"scan/{remat}"] = grads(True, remat, stacked, x, img)
    return out

  return run(plain, stacked, x_BxLxD, img_BxPxD)


@pytest.mark.parametrize("variant", ["plain/full"] + [f"scan/{r}" for r in POLICIES])
def test_each_remat_policy_gives_the_gradients_without_remat(variant):
  grads = block_gradients()
  assert float(jnp.abs(grads["reference"][2]).max()) > 0.01
  assert_trees_close(grads[variant], grads["reference"])


@pytest.mark.parametrize("scanned", [False, True])
def test_remat_policies_keep_fewer_activations(scanned):
  """What the forward pass keeps for the backward pass shrinks from no remat
  to "dots_saveable" (every product) to "dots" (products with weights) to
  "full" (block inputs only), in either layout."""
  images, tokens = inputs()
  params = init_params()
  params = pyloop_to_scan(params) if scanned else params

  def kept_bytes(remat):
    model_def = graphdef(scan_layers=scanned, remat=remat)
    loss = lambda p: jnp.mean(nnx.merge(model_def, p)(images, tokens) ** 2)
    residuals = jax.eval_shape(lambda p: jax.vjp(loss, p)[1], params)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(residuals))

  kept = {remat: kept_bytes(remat) for remat in REMAT_POLICIES}
  assert kept["none"] > kept["dots_saveable"] > kept["dots"] > kept["full"], kept
  assert kept["offload"] == kept["dots"], kept


def test_scanned_generation_gives_the_plain_tokens():
  """Greedy KV-cache generation and prompt-lookup decoding of the scanned
  model (its parameters converted from the plain one's) give the plain
  model's tokens."""
  images, _ = inputs(batch=4)
  prompts = jnp.array([[1, 2, 1, 2], [4, 5, 0, 0], [1, 6, 7, 0], [3, 3, 3, 3]],
                      jnp.int32)
  lens = jnp.array([4, 2, 3, 4], jnp.int32)
  plain_def, scan_def = graphdef(), graphdef(scan_layers=True)
  kw = dict(max_len=CFG.max_len, eos_id=6, pad_id=0, prefill_len=2)

  @jax.jit
  def run(plain):
    scanned = nnx.merge(scan_def, pyloop_to_scan(plain))
    return (generate(nnx.merge(plain_def, plain), images, prompts, lens, **kw),
            generate(scanned, images, prompts, lens, **kw),
            generate_lookup(scanned, images, prompts, lens, k=3, **kw))

  want, got, lookup = run(init_params(seed=2))
  for out in (got, lookup):
    np.testing.assert_array_equal(out.tokens, want.tokens)
    np.testing.assert_array_equal(out.gen_len, want.gen_len)
    np.testing.assert_array_equal(out.done, want.done)
  # Generation ran past the prompts and some rows stopped at eos, others not;
  # lookup confirmed several tokens in some calls.
  assert int(want.gen_len.min()) > 0 and 0 < int(want.done.sum()) < 4, want
  assert int(lookup.calls) < CFG.max_len - kw["prefill_len"], lookup


def test_trainer_groups_and_shards_the_scanned_layout(tiny):
  """The default interference groups cover the stacked parameters, one group
  per stacked sublayer kind, and the trainer shards their width over fsdp."""
  c = tiny(data=4, fsdp=2)
  c.model.update(scan_layers=True, dec_depth=2)
  _, _, setup, _ = loop.build(c, jax.devices())
  params = setup.abstract["params"]
  leaf_groups, names = groups_lib.assign(params, c.interference.groups)
  assert len(leaf_groups) == len(jax.tree.leaves(params))
  assert names == ("enc/embed", "enc/blocks", "enc/final_ln", "dec/embed",
                   "dec/blocks/self_attn", "dec/blocks/cross_attn",
                   "dec/blocks/mlp", "dec/head")
  group_of = dict(zip((groups_lib.path_name(p) for p, _ in
                       jax.tree_util.tree_flatten_with_path(params)[0]),
                      (names[i] for i in leaf_groups)))
  assert group_of["decoder/blocks/ln_cross/scale"] == "dec/blocks/cross_attn"
  assert group_of["encoder/blocks/mlp/fc2/bias"] == "enc/blocks"
  # The stacked axis stays whole; the width is split over fsdp.
  kernel = params["decoder"]["blocks"]["mlp"]["fc1"]["kernel"]
  assert kernel.shape == (2, 32, 64)
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)


def test_remat_and_scan_settings_are_checked(tiny):
  with pytest.raises(ValueError, match=r"remat=True is not a remat policy; "
                     r"expected one of \['none', 'full', 'dots'"):
    dataclasses.replace(CFG, remat=True)
  with pytest.raises(ValueError, match="scan_layers must be a bool"):
    dataclasses.replace(CFG, scan_layers="yes")
  c = tiny()
  c.model.remat = "dots_with_no_batch_dims"
  with pytest.raises(ValueError, match=r"config.model.remat must be one of \["):
    config_lib.validate(c)
