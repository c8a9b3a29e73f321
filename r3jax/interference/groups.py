"""Parameter groups for per-group interference statistics.

A group rule is (regex over the parameter path "a/b/c", name template); the
first rule whose regex matches a path wins and the group's name is the template
expanded with the match (so r"\\1" names a block by its index). Groups are
ordered by rule, then naturally by name, so the default rules list the encoder
from input to output and then the decoder sublayer by sublayer.

With config.model.scan_layers the blocks' parameters are stacked along a leading
layers axis (r3jax/model/scan.py) and their paths carry no block index
("decoder/blocks/self_attn/query/kernel"), so a group cannot hold one layer. The
default rules then give each stacked sublayer type one group over all layers:
"enc/blocks" (every encoder block), "dec/blocks/self_attn",
"dec/blocks/cross_attn" and "dec/blocks/mlp"; each is the union of the plain
layout's per-block groups of that kind (enc/block<i>, dec/block<i>/...).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax

# Ordered (regex, name) pairs; see the module docstring.
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    (r"^encoder/(patch_embed|conv_stem|pos_embed)/?", "enc/embed"),
    (r"^encoder/blocks/(\d+)/", r"enc/block\1"),
    (r"^encoder/blocks/", "enc/blocks"),  # scan_layers: stacked over layers
    (r"^encoder/ln_final/", "enc/final_ln"),
    (r"^img_proj/", "enc/proj"),
    (r"^decoder/(tok_embed|pos_embed)$", "dec/embed"),
    (r"^decoder/blocks/(\d+)/(ln_self|self_attn)/", r"dec/block\1/self_attn"),
    (r"^decoder/blocks/(\d+)/(ln_cross|cross_attn)/", r"dec/block\1/cross_attn"),
    (r"^decoder/blocks/(\d+)/(ln_mlp|mlp)/", r"dec/block\1/mlp"),
    # scan_layers: each sublayer type stacked over layers.
    (r"^decoder/blocks/(ln_self|self_attn)/", "dec/blocks/self_attn"),
    (r"^decoder/blocks/(ln_cross|cross_attn)/", "dec/blocks/cross_attn"),
    (r"^decoder/blocks/(ln_mlp|mlp)/", "dec/blocks/mlp"),
    (r"^decoder/(ln_final|head)/", "dec/head"),
)


def path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _natural(name: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def assign(params, rules: Sequence[Sequence[str]] = DEFAULT_RULES
           ) -> tuple[list[int], tuple[str, ...]]:
  """Group index of every leaf (in jax.tree.leaves order) and the group names.

  Raises ValueError naming the first parameter that no rule matches.
  """
  compiled = [(re.compile(rx), tmpl) for rx, tmpl in rules]
  found: dict[str, tuple[int, list]] = {}
  leaf_groups = []
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = path_name(path)
    for order, (rx, tmpl) in enumerate(compiled):
      m = rx.search(name)
      if m:
        group = m.expand(tmpl)
        found.setdefault(group, (order, _natural(group)))
        leaf_groups.append(group)
        break
    else:
      raise ValueError(
          f"parameter {name!r} matches no interference group rule; add a rule "
          f"(e.g. (r'.*', 'other') last) to config.interference.groups")
  names = tuple(sorted(found, key=found.get))
  index = {g: i for i, g in enumerate(names)}
  return [index[g] for g in leaf_groups], names
