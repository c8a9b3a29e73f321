"""R3 variants: what a round of the loop does, by name (config.r3.variant).

A variant names the R3 tasks it trains and how a round runs at inference:
  reflect               a reflect stage (<reflect> DRAFT <sep> -> REFLECTION)
                        decides whether the round edits; without it every
                        round refines (<refine> DRAFT <sep> -> REFINED) and
                        stops when the refined caption repeats its draft
  refine_reads_reflection
                        the refined caption is decoded after the reflection
                        (<reflect> DRAFT <sep> REFLECTION <sep> -> REFINED,
                        the refine task's format); False: from the refine
                        prompt without it (<refine> DRAFT <sep> -> REFINED,
                        the refine_direct task's), only for the rows whose
                        reflection names an edit

`register` adds one defined anywhere (docs/extending.md). The empty name
picks the variant from the tasks a run trains (`infer`), as runs did before
variants had names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

R3_TASKS = ("reflect", "refine", "refine_direct")


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  tasks: tuple[str, ...]
  reflect: bool = True
  refine_reads_reflection: bool = True

  @property
  def refine_task(self) -> str:
    """The task whose format (and max_len) the refined caption decodes in."""
    return ("refine" if self.reflect and self.refine_reads_reflection
            else "refine_direct")


VARIANTS: dict[str, Variant] = {}


def register(variant: Variant) -> Variant:
  if variant.name in VARIANTS and VARIANTS[variant.name] != variant:
    raise ValueError(f"R3 variant {variant.name!r} is already registered")
  unknown = sorted(set(variant.tasks) - set(R3_TASKS))
  if unknown:
    raise ValueError(f"R3 variant {variant.name!r} names tasks {unknown}; "
                     f"its tasks are some of {R3_TASKS}")
  VARIANTS[variant.name] = variant
  return variant


def unregister(name: str) -> None:
  VARIANTS.pop(name, None)


# reason -> reflect -> refine, the refined caption after the reflection.
REFLECT_REFINE = register(Variant("reflect_refine", ("reflect", "refine")))
# The no-reflect ablation: every round refines directly.
DIRECT = register(Variant("direct", ("refine_direct",), reflect=False,
                          refine_reads_reflection=False))


def infer(tasks: Iterable[str]) -> Variant:
  """The variant a run's R3 tasks imply (config.r3.variant=""): direct with
  refine_direct and no reflect, else reflect -> refine. reflect with
  refine_direct and without refine implies neither: a ValueError asks for
  the variant's name."""
  tasks = set(tasks)
  if "refine_direct" in tasks and "reflect" not in tasks:
    return DIRECT
  if {"reflect", "refine_direct"} <= tasks and "refine" not in tasks:
    raise ValueError("the R3 tasks reflect and refine_direct (without "
                     "refine) imply no built-in variant: name one in "
                     f"config.r3.variant (registered: {sorted(VARIANTS)}; "
                     "docs/extending.md)")
  return REFLECT_REFINE


def get(name: str, tasks: Iterable[str]) -> Variant:
  """config.r3.variant's Variant ("" infers it from `tasks`)."""
  if not name:
    return infer(tasks)
  if name not in VARIANTS:
    raise ValueError(f"unknown R3 variant {name!r}; known: "
                     f"{sorted(VARIANTS)} (r3jax.r3.variants.register)")
  return VARIANTS[name]
