"""r3jax against the same architecture in PyTorch (Hugging Face transformers),
in one run on the same CPU: training-step and greedy-generation throughput.

  make install   # or: pip install -e ".[bench]"
  python benchmarks/vs_pytorch.py [--size default] [--batch 0] [--steps 5]
      [--rounds 3] [--gen-batch 32] [--gen-tokens 32] [--threads N]

The PyTorch model is a randomly initialised VisionEncoderDecoderModel (nothing
downloaded): a ViTModel encoder (no pooler) and a GPT2LMHeadModel decoder with
cross-attention, at the r3jax config's widths, depths, heads, MLP sizes,
vocabulary, image and patch size and decoder positions (benchmarks/common.py
SIZES; default configs/joint.py's model). Both are pre-LN with the same block
order (self-attention, cross-attention, MLP), tanh-GELU, LayerNorm eps 1e-6,
biases on every projection, learned positions, and an image projection when
the widths differ. Differences, all small:
  - ViT prepends a CLS token: P + 1 image tokens (one more position
    embedding and the CLS vector: 2 * D_enc more parameters);
  - GPT-2 ties its output head to the token embedding and has no head bias;
    r3jax's head is its own (D_dec * V + V more parameters);
  - PyTorch runs eagerly (no torch.compile), attention through SDPA.
The script checks the parameter counts differ by exactly that.

(a) train: the same split-layout batch (configs/joint.py's tasks, --batch per
task), loss = per-task token cross-entropy on the masked targets, summed with
the task weights, global-norm clipping and AdamW: r3jax's plain jitted step
(r3jax.run.loop.make_update, interference off) against loss.backward() +
clip_grad_norm_ + torch.optim.AdamW (decay on matrices only). Figure:
examples/s. (b) generate: greedy with KV caches from a one-token prompt,
exactly --gen-tokens new tokens (eos never stops r3jax; min_new_tokens for
HF): r3jax.model.decoding.make_generate_fn against HF generate(do_sample=False,
use_cache=True). Figure: generated tokens/s. Both include encoding the images.
float32 throughout; torch.set_num_threads(--threads, default all host CPUs);
warm-up excluded; medians over interleaved rounds.
Prints train_ratio and generate_ratio = r3jax / PyTorch (targets >= 2).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def torch_model(mcfg):
  """The HF VisionEncoderDecoderModel matching r3jax ModelConfig `mcfg`."""
  from transformers import (  # noqa: PLC0415
      GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel, VisionEncoderDecoderModel)
  enc = ViTConfig(
      image_size=mcfg.image_size, patch_size=mcfg.patch_size, num_channels=3,
      hidden_size=mcfg.enc_width, num_hidden_layers=mcfg.enc_depth,
      num_attention_heads=mcfg.enc_heads, intermediate_size=mcfg.enc_mlp,
      hidden_act="gelu_pytorch_tanh", hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0, layer_norm_eps=1e-6, qkv_bias=True,
      attn_implementation="sdpa")
  dec = GPT2Config(
      vocab_size=mcfg.vocab_size, n_positions=mcfg.max_len,
      n_embd=mcfg.dec_width, n_layer=mcfg.dec_depth, n_head=mcfg.dec_heads,
      n_inner=mcfg.dec_mlp, activation_function="gelu_pytorch_tanh",
      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
      layer_norm_epsilon=1e-6, add_cross_attention=True, is_decoder=True,
      bos_token_id=1, eos_token_id=2, pad_token_id=0,
      attn_implementation="sdpa")
  model = VisionEncoderDecoderModel(
      encoder=ViTModel(enc, add_pooling_layer=False),
      decoder=GPT2LMHeadModel(dec))
  model.config.decoder_start_token_id = 1
  model.config.pad_token_id = 0
  return model


def expected_param_diff(mcfg) -> int:
  """PyTorch minus r3jax parameters (see the module docstring)."""
  return 2 * mcfg.enc_width - (mcfg.dec_width * mcfg.vocab_size +
                               mcfg.vocab_size)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="default")
  p.add_argument("--batch", type=int, default=0,
                 help="per-task batch (0: the config's)")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--gen-batch", type=int, default=32)
  p.add_argument("--gen-tokens", type=int, default=32)
  p.add_argument("--threads", type=int, default=os.cpu_count(),
                 help="torch threads; 1 also keeps XLA on one thread (use it "
                 "on a busy machine, where 2 spinning torch threads on 2 "
                 "shared cores run ~100x slower)")
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)
  if args.threads == 1:  # only effective before JAX initialises
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false"
                               " intra_op_parallelism_threads=1")

  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  import torch  # noqa: PLC0415
  import torch.nn.functional as F  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from benchmarks import common  # noqa: PLC0415
  from r3jax import sharding  # noqa: PLC0415
  from r3jax.model import decoding  # noqa: PLC0415

  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  c = common.bench_config(args.size, args.batch or None,
                          max_len=0)
  c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
  mcfg = common.model_config(c)
  if args.gen_tokens + 1 > mcfg.max_len:
    raise SystemExit(f"--gen-tokens {args.gen_tokens} needs max_len > "
                     f"{mcfg.max_len}")
  batch = common.random_batch(c, mcfg.vocab_size)
  n_examples = sum(b["tokens"].shape[0] for b in batch.values())
  weights = {k: t.weight for k, t in c.tasks.items()}

  # r3jax
  mesh, setup, init, update = common.train_step(c, mcfg)
  jbatch = jax.device_put(batch, sharding.batch_sharding(mesh))
  with jax.set_mesh(mesh):
    jstate = [init()]
  params_jax = sum(x.size for x in jax.tree.leaves(jstate[0]["params"]))

  def jax_train():
    with jax.set_mesh(mesh):
      jstate[0], m = update(jstate[0], jbatch)
      jax.block_until_ready(m)

  gen = decoding.make_generate_fn(setup.graphdef, max_len=1 + args.gen_tokens,
                                  eos_id=-1, pad_id=0, prefill_len=1)
  rng = np.random.default_rng(1)
  size = c.world.image_size
  images = rng.integers(0, 256, (args.gen_batch, size, size, 3), np.uint8)
  jimages = jnp.asarray(images)
  prompt = jnp.ones((args.gen_batch, 1), jnp.int32)
  prompt_len = jnp.ones((args.gen_batch,), jnp.int32)
  with jax.set_mesh(mesh):  # the train step donates (deletes) its state
    gparams = nnx.State(init()["params"])

  def jax_generate():
    out = jax.block_until_ready(gen(gparams, jimages, prompt, prompt_len))
    assert int(out.gen_len.min()) == args.gen_tokens, out.gen_len
    return out

  # PyTorch
  model = torch_model(mcfg)
  params_torch = sum(x.numel() for x in model.parameters())

  def pixels(u8):
    return torch.from_numpy(u8.astype(np.float32) / 127.5 - 1.0).permute(
        0, 3, 1, 2).contiguous()

  tbatch = {k: {"pix": pixels(b["image"]),
                "tokens": torch.from_numpy(b["tokens"]).long(),
                "targets": torch.from_numpy(b["targets"]).long(),
                "mask": torch.from_numpy(b["loss_mask"])}
            for k, b in batch.items()}
  o = c.optim
  decay = [q for q in model.parameters() if q.ndim >= 2]
  no_decay = [q for q in model.parameters() if q.ndim < 2]
  opt = torch.optim.AdamW(
      [{"params": decay, "weight_decay": o.weight_decay},
       {"params": no_decay, "weight_decay": 0.0}],
      lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)

  def torch_train():
    model.train()
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for name, b in tbatch.items():
      logits = model(pixel_values=b["pix"], decoder_input_ids=b["tokens"]).logits
      xent = F.cross_entropy(logits.float().flatten(0, 1),
                             b["targets"].flatten(), reduction="none")
      mask = b["mask"].flatten()
      total = total + weights[name] * (xent * mask).sum() / mask.sum().clamp(min=1)
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
    opt.step()

  tpix = pixels(images)
  tprompt = torch.ones((args.gen_batch, 1), dtype=torch.long)

  def torch_generate():
    model.eval()
    with torch.inference_mode():
      out = model.generate(pixel_values=tpix, decoder_input_ids=tprompt,
                           do_sample=False, num_beams=1, use_cache=True,
                           max_new_tokens=args.gen_tokens,
                           min_new_tokens=args.gen_tokens)
    assert out.shape[1] == 1 + args.gen_tokens, out.shape
    return out

  fns = {"jax_train": jax_train, "torch_train": torch_train,
         "jax_generate": jax_generate, "torch_generate": torch_generate}
  for f in fns.values():  # warm-up: compiles, allocator, caches
    f()
    f()
  med = common.interleaved(
      {k: f for k, f in fns.items() if k.endswith("train")}, args.rounds,
      args.steps)
  med.update(common.interleaved(
      {k: f for k, f in fns.items() if k.endswith("generate")}, args.rounds,
      max(1, args.steps // 2)))

  rep = common.Report()
  rep.hardware()
  rep.put(torch=torch.__version__, torch_threads=torch.get_num_threads(),
          attn=model.decoder.config._attn_implementation)
  rep.put(size=args.size, params_r3jax=params_jax, params_torch=params_torch,
          params_diff=params_torch - params_jax,
          params_diff_expected=expected_param_diff(mcfg),
          params_match=params_torch - params_jax == expected_param_diff(mcfg))
  rep.put(train_examples=n_examples, gen_batch=args.gen_batch,
          gen_tokens=args.gen_tokens)
  tr = {k: n_examples / med[f"{k}_train"] for k in ("jax", "torch")}
  ge = {k: args.gen_batch * args.gen_tokens / med[f"{k}_generate"]
        for k in ("jax", "torch")}
  rep.put(train_examples_per_s_r3jax=tr["jax"],
          train_examples_per_s_torch=tr["torch"],
          train_ratio=tr["jax"] / tr["torch"])
  rep.put(generate_tokens_per_s_r3jax=ge["jax"],
          generate_tokens_per_s_torch=ge["torch"],
          generate_ratio=ge["jax"] / ge["torch"])
  rep.write(args.json)
  if params_torch - params_jax != expected_param_diff(mcfg):
    raise SystemExit("vs_pytorch: the two models' parameter counts differ by "
                     "more than the documented differences")
  return rep.figures


if __name__ == "__main__":
  main()
