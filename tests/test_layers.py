"""The package's layering (README "Map of the code"): every import of a
module of r3jax, at the top of a file or inside a function, goes to its own
layer or one below it, no import cycle exists, and nothing under r3jax/
imports experiments/ or benchmarks/."""

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "r3jax")

# Bottom to top; modules of one layer may import each other.
LAYERS = (
    ("world",),
    ("sharding", "logs", "distributed"),
    ("data", "model", "eval"),
    ("train",),
    ("interference",),
    ("r3",),
    ("config", "config_checks", "report"),
    ("run",),
    ("analysis", "main"),
)
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, str]:
  out = {}
  for d, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(d, f)
        rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3]
        name = rel.replace(os.sep, ".").removesuffix(".__init__")
        out[name] = path
  return out


def _imports(path: str, modules) -> set[str]:
  """The r3jax modules a file imports, and any non-r3jax top-level name."""
  out = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for a in node.names:
        full = f"{node.module}.{a.name}"
        out.add(full if full in modules else node.module)
    elif isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
  return out


def _layer(module: str) -> str:
  return module.split(".")[1] if module.count(".") else ""


def test_imports_only_go_down_and_never_to_experiments():
  modules = _modules()
  up, outside = [], []
  for name, path in modules.items():
    if name == "r3jax":
      continue
    src = _layer(name)
    assert src in RANK, f"{name}: add its layer to LAYERS"
    for target in _imports(path, modules):
      top = target.split(".")[0]
      if top in ("experiments", "benchmarks", "scripts", "tests"):
        outside.append(f"{name} -> {target}")
      if top != "r3jax" or target == "r3jax":
        continue
      dst = _layer(target)
      if RANK[dst] > RANK[src]:
        up.append(f"{name} ({src}) -> {target} ({dst})")
  assert not up, "imports up a layer:\n" + "\n".join(sorted(up))
  assert not outside, "r3jax imports outside the package:\n" + "\n".join(
      outside)


def test_no_import_cycles():
  modules = _modules()
  graph = {m: {t for t in _imports(p, modules) if t in modules and t != m}
           for m, p in modules.items()}
  # A package's own __init__ importing its submodules is not a cycle.
  graph = {m: {t for t in ts if not m.startswith(t + ".")}
           for m, ts in graph.items()}
  state, stack, cycles = {}, [], []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for t in sorted(graph[m]):
      if state.get(t) == "open":
        cycles.append(stack[stack.index(t):] + [t])
      elif t not in state:
        visit(t)
    stack.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m)
  assert not cycles, "import cycles:\n" + "\n".join(
      " -> ".join(c) for c in cycles)
