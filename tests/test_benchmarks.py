"""The benchmarks' torch-free parts: the analytic FLOP count against XLA's
cost analysis, and decode.py / scaling.py / run_all.py at tiny sizes."""

import jax
import pytest
from flax import nnx

from benchmarks import common, compile_flags, decode, mfu, run_all, scaling
from r3jax.model import Model


def _tiny(batch=2, tasks=""):
  c = common.bench_config("tiny", batch, tasks=tasks)
  return c, common.model_config(c)


def test_forward_flops_match_xla_cost_analysis():
  c, mcfg = _tiny()
  with nnx.use_eager_sharding(False):
    graphdef, state = nnx.split(Model(mcfg, rngs=nnx.Rngs(0)))
  batch = common.random_batch(c, mcfg.vocab_size)["caption"]
  fwd = jax.jit(lambda s, im, tok: nnx.merge(graphdef, s)(im, tok))
  xla = mfu.xla_flops(fwd.lower(state, batch["image"], batch["tokens"]).compile())
  b, n = batch["tokens"].shape
  analytic = sum(mfu.forward_flops(mcfg, b, n).values())
  # XLA also counts LayerNorm, softmax and GELU arithmetic: a few % more.
  assert 1.0 <= xla / analytic <= 1.06, (xla, analytic)


def test_train_flops_match_xla_cost_analysis():
  c, mcfg = _tiny(batch=4, tasks="caption")
  mesh, setup, _, update = common.train_step(c, mcfg, jax.devices()[:1])
  batch = common.random_batch(c, mcfg.vocab_size)
  with jax.set_mesh(mesh):
    xla = mfu.xla_flops(update.lower(setup.abstract, batch).compile())
  analytic = mfu.train_flops(
      mcfg, [(t.batch_size, t.max_len) for t in c.tasks.values()])
  # Plus elementwise work of the backward pass, the loss and the optimizer.
  assert 1.0 <= xla / analytic <= 1.1, (xla, analytic)
  # Dropping a term (here the encoder's attention scores) is caught.
  p, b = mcfg.num_patches, sum(t.batch_size for t in c.tasks.values())
  assert xla / (analytic - 3 * b * mcfg.enc_depth * 4 * p * p *
                mcfg.enc_width) > 1.1


def test_peak_table():
  assert mfu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert mfu.peak_tflops("NVIDIA H100 PCIe") == 756.0
  assert mfu.peak_tflops("NVIDIA H200") == 989.0
  assert mfu.peak_tflops("TPU v5 lite") == 197.0
  assert mfu.peak_tflops("TPU v5p") == 459.0
  assert mfu.peak_tflops("cpu") is None


def test_decode_main_generates_every_token(capsys):
  figures = decode.main(["--size", "tiny", "--batch", "2", "--tokens", "4",
                         "--repeats", "1", "--rounds", "1"])
  out = capsys.readouterr().out
  for n in (4,):
    for key in (f"kv_ms_{n}", f"recompute_ms_{n}", f"speedup_{n}"):
      assert f"{key}=" in out
    assert figures[f"speedup_{n}"] == pytest.approx(
        figures[f"recompute_ms_{n}"] / figures[f"kv_ms_{n}"])
    assert figures[f"kv_tokens_per_s_{n}"] == pytest.approx(
        2 * n / figures[f"kv_ms_{n}"] * 1e3)
  assert out.startswith("hardware=cpu:")


def test_scaling_main_halves_params_opt_bytes(capsys):
  figures = scaling.main(["--size", "tiny", "--batch", "2", "--devices", "2",
                          "--tasks", "caption"])
  out = capsys.readouterr().out
  assert "params_opt_bytes_2=" in out and "ratio_2=" in out
  assert figures["params_opt_bytes_1"] == figures["params_opt_bytes_whole"]
  # Only small vectors stay replicated.
  assert 0.5 <= figures["ratio_2"] <= 0.55
  assert figures["unsharded_large_2"] == 0


def test_run_all_parses_and_judges():
  got = run_all.parse("hardware=cpu:cpu x1 host_cpus=2 (x86_64)\n"
                      "a=1 b=2.5 mfu=n/a\nnot a figure\n")
  assert got == {"hardware": "cpu:cpu x1 host_cpus=2 (x86_64)", "a": 1,
                 "b": 2.5, "mfu": "n/a"}
  rows = run_all.summary({"decode": {"speedup_32": 4.0, "speedup_128": 9.0},
                          "scaling": {"returncode": 1, "error": ["boom"]}})
  assert any("speedup_32" in r and r.endswith("no") for r in rows)
  assert any("FAILED" in r and "boom" in r for r in rows)
  assert set(run_all.BENCHMARKS) == {
      "vs_pytorch", "mfu", "decode", "scaling", "interference_overhead",
      "compile_flags", "r3_latency"}


def test_compile_flags_measures_the_suites_own_flags():
  import conftest  # noqa: PLC0415
  assert compile_flags.SETS["tests"] == conftest.FAST_COMPILE


def test_compile_flags_names_a_failing_flag_set():
  with pytest.raises(RuntimeError, match=r"(?s)XLA_FLAGS='--no_such_flag'"
                     r".*Unknown flag in XLA_FLAGS"):
    compile_flags._time("runlocal", "plain", "--no_such_flag")
