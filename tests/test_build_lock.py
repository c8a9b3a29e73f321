"""Two processes building the same dataset at once: the file lock makes the
second wait and reuse the first's build."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_BUILD = textwrap.dedent("""
    import sys
    from r3jax import world
    from r3jax.data import world_tfds
    cfg = world.WorldConfig(image_size=32)
    b = world_tfds.build(cfg, sys.argv[1], {"train": 300, "validation": 8,
                                            "test": 8}, 0)
    src = world_tfds.data_source(b, "train")
    print(len(src), int(src[299]["image"].sum()))
""")


def test_concurrent_builds_wait_for_each_other(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-c", _BUILD, str(tmp_path)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  last = [out.strip().splitlines()[-1] for out, _ in outs]
  assert last[0] == last[1] and last[0].startswith("300 ")
  # One of them built it, the other waited and found it prepared.
  assert sum("Downloading and preparing" in out for out, _ in outs) == 1
  assert os.path.exists(tmp_path / ".build.lock")
  assert not [n for n in os.listdir(tmp_path / "r3_world") if "incomplete" in n]
