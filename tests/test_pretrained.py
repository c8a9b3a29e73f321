"""Pretrained ViT encoders (r3jax.model.pretrained): Hugging Face ViT parity
against transformers' own forward pass, big_vision .npz parity against an
independent numpy forward in big_vision's layout, position resampling, and
model.encoder_init in a run's initial state."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import nnx

from conftest import tiny_config
from r3jax import config as config_lib
from r3jax.model import ModelConfig
from r3jax.model import pretrained
from r3jax.model.vit import Encoder
from r3jax.run import loop
from r3jax.run import source

WIDTH, DEPTH, HEADS, MLP, PATCH = 32, 2, 4, 64, 8


def _cfg(image_size=32, **kw):
  fields = dict(vocab_size=8, image_size=image_size, patch_size=PATCH,
                enc_width=WIDTH, enc_depth=DEPTH, enc_heads=HEADS, enc_mlp=MLP,
                dec_width=16, dec_depth=1, dec_heads=2, dec_mlp=32, max_len=8)
  return ModelConfig(**(fields | kw))


def _encode(cfg: ModelConfig, params, images: np.ndarray) -> np.ndarray:
  """The r3jax encoder with `params` (load_encoder's, plain layout)."""
  with nnx.use_eager_sharding(False):
    enc = Encoder(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(enc)
  pure = nnx.to_pure_dict(state)
  if cfg.scan_layers:
    params = dict(params, blocks=jax.tree.map(
        lambda *xs: np.stack(xs), *[params["blocks"][i] for i in range(DEPTH)]))
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), pure,
               params)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return np.asarray(nnx.merge(graphdef, state)(jnp.asarray(images)))


def _images(n=3, size=32, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(
      np.float32)


# ----------------------------------------------------------- Hugging Face ----

def _hf_vit(seed=0):
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415
  torch.manual_seed(seed)
  config = transformers.ViTConfig(
      hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
      intermediate_size=MLP, image_size=32, patch_size=PATCH, num_channels=3,
      hidden_act="gelu", hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0)
  model = transformers.ViTModel(config, add_pooling_layer=False).eval()
  with torch.no_grad():  # no parameter left at a trivial value (LN 1, bias 0)
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


def _hf_out(model, images):
  import torch  # noqa: PLC0415
  with torch.no_grad():
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    return model(pixel_values=x).last_hidden_state.numpy()


_V4 = {"attention.q_proj": "attention.attention.query",
       "attention.k_proj": "attention.attention.key",
       "attention.v_proj": "attention.attention.value",
       "attention.o_proj": "attention.output.dense",
       "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}


def _v4_name(name: str) -> str:
  """transformers 5's ViT tensor name as checkpoints on the hub have it."""
  if not name.startswith("layers."):
    return name
  _, i, rest = name.split(".", 2)
  for new, old in _V4.items():
    rest = rest.replace(new, old)
  return f"encoder.layer.{i}.{rest}"


@pytest.mark.parametrize("fmt,names", [("safetensors", "v4"), ("bin", "v5"),
                                       ("dir", "v5")])
def test_hugging_face_vit_matches_transformers(tmp_path, fmt, names):
  import safetensors.torch  # noqa: PLC0415
  import torch  # noqa: PLC0415
  model = _hf_vit()
  rename = _v4_name if names == "v4" else str
  # As ViTForImageClassification saves it: under "vit.", with a head.
  state = {f"vit.{rename(k)}": v.contiguous()
           for k, v in model.state_dict().items()}
  state["classifier.weight"] = torch.zeros(5, WIDTH)
  if fmt == "safetensors":
    path = str(tmp_path / "vit.safetensors")
    safetensors.torch.save_file(state, path)
  elif fmt == "bin":
    path = str(tmp_path / "vit.bin")
    torch.save(state, path)
  else:
    path = str(tmp_path)
    safetensors.torch.save_file(state, str(tmp_path / "model.safetensors"))
  cfg = _cfg(cls_token=True, enc_gelu="erf")
  images = _images()
  ours = _encode(cfg, pretrained.load_encoder(path, cfg), images)
  theirs = _hf_out(model, images)
  assert ours.shape == theirs.shape == (3, 1 + 16, WIDTH)
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  # The GELU matters at this tolerance: the tanh one does not match.
  tanh = _cfg(cls_token=True)
  assert np.abs(_encode(tanh, pretrained.load_encoder(path, tanh), images)
                - theirs).max() > 1e-4


def test_hugging_face_vit_at_another_resolution_resamples_positions(tmp_path):
  import safetensors.torch  # noqa: PLC0415
  model = _hf_vit(seed=1)
  path = str(tmp_path / "vit.safetensors")
  safetensors.torch.save_file(
      {k: v.contiguous() for k, v in model.state_dict().items()}, path)
  cfg = _cfg(image_size=48, cls_token=True, enc_gelu="erf")
  params = pretrained.load_encoder(path, cfg)
  pos = model.embeddings.position_embeddings.detach().numpy()[0]
  assert params["pos_embed"].shape == (1 + 36, WIDTH)
  np.testing.assert_array_equal(params["pos_embed"][0], pos[0])  # CLS kept
  grid = params["pos_embed"][1:].reshape(6, 6, WIDTH)
  old = pos[1:].reshape(4, 4, WIDTH)
  for i, j in [(0, 0), (0, 5), (5, 0), (5, 5)]:  # corners stay corners
    np.testing.assert_allclose(grid[i, j], old[i * 3 // 5, j * 3 // 5],
                               rtol=1e-6)
  assert _encode(cfg, params, _images(size=48)).shape == (3, 37, WIDTH)


def test_safetensors_reader_matches_the_library(tmp_path):
  import safetensors.numpy  # noqa: PLC0415
  rng = np.random.default_rng(0)
  tensors = {"a": rng.normal(size=(3, 4)).astype(np.float32),
             "b": rng.normal(size=(5,)).astype(np.float16),
             "c": np.arange(6, dtype=np.int64).reshape(2, 3)}
  path = str(tmp_path / "t.safetensors")
  safetensors.numpy.save_file(tensors, path, metadata={"format": "np"})
  got = pretrained.read_safetensors(path)
  assert sorted(got) == sorted(tensors)
  for k, v in tensors.items():
    assert got[k].dtype == v.dtype
    np.testing.assert_array_equal(got[k], v)
  with open(path, "r+b") as f:
    f.write((10 ** 9).to_bytes(8, "little"))
  with pytest.raises(ValueError, match="runs past the end"):
    pretrained.read_safetensors(path)


# ------------------------------------------------------------- big_vision ----

def _bv_params(seed=0, cls=False, heads=HEADS):
  """A random ViT in big_vision's Flax layout (nested, per layer)."""
  rng = np.random.default_rng(seed)
  r = lambda *s: rng.normal(0, 0.2, s).astype(np.float32)  # noqa: E731
  k = WIDTH // heads
  blocks = {}
  for i in range(DEPTH):
    blocks[f"encoderblock_{i}"] = {
        "LayerNorm_0": {"scale": 1 + r(WIDTH), "bias": r(WIDTH)},
        "LayerNorm_1": {"scale": 1 + r(WIDTH), "bias": r(WIDTH)},
        "MultiHeadDotProductAttention_0": {
            **{n: {"kernel": r(WIDTH, heads, k), "bias": r(heads, k)}
               for n in ("query", "key", "value")},
            "out": {"kernel": r(heads, k, WIDTH), "bias": r(WIDTH)}},
        "MlpBlock_0": {"Dense_0": {"kernel": r(WIDTH, MLP), "bias": r(MLP)},
                       "Dense_1": {"kernel": r(MLP, WIDTH), "bias": r(WIDTH)}}}
  params = {"embedding": {"kernel": r(PATCH, PATCH, 3, WIDTH),
                          "bias": r(WIDTH)},
            "pos_embedding": r(1, 16, WIDTH),
            "Transformer": {**blocks, "encoder_norm": {
                "scale": 1 + r(WIDTH), "bias": r(WIDTH)}},
            "head": {"kernel": r(WIDTH, 7), "bias": r(7)}}
  if cls:
    params["cls"] = r(1, 1, WIDTH)
  return params


def _bv_forward(p, images):
  """big_vision's ViT forward (models/vit.py: conv patches + posemb, then the
  "tok" token, pre-LN blocks with tanh GELU, encoder_norm), in numpy."""
  n, h = images.shape[0], images.shape[1] // PATCH
  x = np.einsum("nhpwqc,pqcd->nhwd",
                images.reshape(n, h, PATCH, h, PATCH, 3),
                p["embedding"]["kernel"]) + p["embedding"]["bias"]
  x = x.reshape(n, h * h, WIDTH) + p["pos_embedding"]
  if "cls" in p:
    x = np.concatenate([np.broadcast_to(p["cls"], (n, 1, WIDTH)), x], 1)

  def ln(x, q):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * q["scale"] + q["bias"]

  def gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

  t = p["Transformer"]
  for i in range(DEPTH):
    b = t[f"encoderblock_{i}"]
    a = b["MultiHeadDotProductAttention_0"]
    y = ln(x, b["LayerNorm_0"])
    q, k, v = (np.einsum("nld,dhk->nlhk", y, a[m]["kernel"]) + a[m]["bias"]
               for m in ("query", "key", "value"))
    w = scipy.special.softmax(np.einsum("nlhk,nmhk->nhlm", q, k)
                              / math.sqrt(q.shape[-1]), axis=-1)
    o = np.einsum("nhlm,nmhk->nlhk", w, v)
    x = x + np.einsum("nlhk,hkd->nld", o, a["out"]["kernel"]) + a["out"]["bias"]
    m = b["MlpBlock_0"]
    y = gelu(ln(x, b["LayerNorm_1"]) @ m["Dense_0"]["kernel"]
             + m["Dense_0"]["bias"])
    x = x + y @ m["Dense_1"]["kernel"] + m["Dense_1"]["bias"]
  return ln(x, t["encoder_norm"])


def _flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}/"))
    else:
      out[prefix + k] = v
  return out


def _scanned(params):
  """The same weights as a scanned big_vision model saves them."""
  t = dict(params["Transformer"])
  blocks = [t.pop(f"encoderblock_{i}") for i in range(DEPTH)]
  t["encoderblock"] = jax.tree.map(lambda *xs: np.stack(xs), *blocks)
  return dict(params, Transformer=t)


@pytest.mark.parametrize("layout", ["plain", "scanned", "vit_jax"])
@pytest.mark.parametrize("cls", [False, True])
def test_big_vision_npz_matches_a_numpy_forward(tmp_path, layout, cls):
  params = _bv_params(cls=cls)
  images = _images(size=32, seed=1)
  expected = _bv_forward(params, images.astype(np.float64))
  saved = {"params": params}
  if layout == "scanned":
    saved = {"params": _scanned(params)}
  elif layout == "vit_jax":  # vision_transformer: positions (with the CLS
    # one, zero for equivalence here) inside the Transformer, no "params/"
    saved = dict(params)
    pos = saved.pop("pos_embedding")
    if cls:
      pos = np.concatenate([np.zeros((1, 1, WIDTH), np.float32), pos], 1)
    saved["Transformer"] = dict(saved["Transformer"],
                                posembed_input={"pos_embedding": pos})
  path = str(tmp_path / "vit.npz")
  np.savez(path, **_flat(saved))
  for scan_layers in (False, True):
    cfg = _cfg(cls_token=cls, scan_layers=scan_layers)
    got = _encode(cfg, pretrained.load_encoder(path, cfg), images)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_mismatches_are_named(tmp_path):
  path = str(tmp_path / "vit.npz")
  np.savez(path, **_flat({"params": _bv_params()}))
  with pytest.raises(ValueError, match=r"depth 2 \(config.model: 3\).*mlp 64 "
                     r"\(config.model: 128\)"):
    pretrained.load_encoder(path, _cfg(enc_depth=3, enc_mlp=128))
  with pytest.raises(ValueError, match=r"no \[CLS\] token \(config.model."
                     r"cls_token: True\)"):
    pretrained.load_encoder(path, _cfg(cls_token=True))
  with pytest.raises(ValueError, match="patch size 8"):
    pretrained.load_encoder(path, _cfg(patch_size=16))
  np.savez(path, **{"params/embedding/kernel": np.zeros((8, 8, 3, WIDTH))})
  with pytest.raises(ValueError, match="embedding/bias is missing"):
    pretrained.load_encoder(path, _cfg())
  with pytest.raises(ValueError, match="unknown checkpoint format"):
    pretrained.read_checkpoint(__file__)
  with pytest.raises(FileNotFoundError, match="no pretrained encoder"):
    pretrained.read_checkpoint(str(tmp_path / "missing.npz"))


def test_resampling_is_bilinear_on_the_grid():
  i, j = np.meshgrid(np.arange(4.0), np.arange(4.0), indexing="ij")
  ramp = np.stack([i, j, 2 * i - j], -1).reshape(16, 3)  # linear in (i, j)
  assert pretrained.resample_positions(ramp, 4) is ramp
  got = pretrained.resample_positions(ramp, 7).reshape(7, 7, 3)
  s = 3 / 6  # corners kept: new index a is old index a * 3 / 6
  ii, jj = np.meshgrid(np.arange(7) * s, np.arange(7) * s, indexing="ij")
  np.testing.assert_allclose(got, np.stack([ii, jj, 2 * ii - jj], -1),
                             atol=1e-12)
  with pytest.raises(ValueError, match="not a square grid"):
    pretrained.resample_positions(ramp[:15], 4)


# ------------------------------------------------------ in a run's state ----

@pytest.mark.parametrize("scan_layers", [False, True])
def test_encoder_init_sets_the_initial_state(tmp_path, scan_layers):
  """config.model.encoder_init replaces the freshly initialised encoder
  (and only it) in the state a run starts from; mu is 32 wide, 2 deep, 2
  heads, mlp 64: the checkpoint has that shape."""
  path = str(tmp_path / "vit.npz")
  np.savez(path, **_flat({"params": _bv_params(seed=3, heads=2)}))
  c = tiny_config()
  c.model.scan_layers = scan_layers
  _, _, setup, init_state = loop.build(c, jax.devices()[:1])
  fresh = init_state()
  c.model.encoder_init = path
  _, _, setup, init_state = loop.build(c, jax.devices()[:1])
  state = source.initial_state(c, setup, init_state)
  mcfg = config_lib.model_config(c, 1, c.world.image_size)
  want = pretrained.load_encoder(path, mcfg)
  got = state["params"]["encoder"]
  if scan_layers:
    np.testing.assert_array_equal(
        got["blocks"]["attn"]["query"]["kernel"][1],
        want["blocks"][1]["attn"]["query"]["kernel"])
  else:
    np.testing.assert_array_equal(got["blocks"][1]["attn"]["query"]["kernel"],
                                  want["blocks"][1]["attn"]["query"]["kernel"])
  np.testing.assert_array_equal(got["patch_embed"]["kernel"],
                                want["patch_embed"]["kernel"])
  assert not np.array_equal(got["pos_embed"], fresh["params"]["encoder"][
      "pos_embed"])
  jax.tree.map(np.testing.assert_array_equal, state["params"]["decoder"],
               fresh["params"]["decoder"])


def test_encoder_init_config_errors(tmp_path):
  from r3jax import config as config_lib  # noqa: PLC0415
  c = tiny_config()
  c.model.encoder_init = str(tmp_path / "nope.npz")
  with pytest.raises(ValueError, match="encoder_init=.*does not exist"):
    config_lib.validate(c)
  np.savez(str(tmp_path / "x.npz"), a=np.zeros(1))
  c.model.encoder_init = str(tmp_path / "x.npz")
  c.init_from = str(tmp_path)
  with pytest.raises(ValueError, match="both set"):
    config_lib.validate(c)
  assert os.path.exists(c.model.encoder_init)
