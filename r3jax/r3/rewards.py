"""Stage-wise rewards and group advantages of Tree-RL, as in the R3 code.

V is the verifier's score of a caption: V_strict (all or nothing, the
GenEval++ analogue) or V_frac (the checklist fraction, the TIIF analogue).
f is the binary format reward.

  root (reason)      R = f * (1 + V)
                     f: the draft parses as a caption (verify(...).parsed)
  branch (reflect    R = f * (1 + D),  D = V_new - V_prev, except that
  + refine)              D = 1 when V_prev = 1 and the reflection stops
                     f: the reflection ends in an instruction or the stop
                     string, and an edit is followed by a refined caption
                     a stop leaves the caption as it is (V_new = V_prev) and
                     trains no refine tokens
  chain (ablation)   one outcome for the whole draft -> reflect -> refine
                     trajectory: R = f_root * f_branch * (1 + V_final)

Advantages: A = R - mean of the group (no division by the std).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from r3jax.world import edit as edit_lib
from r3jax.world.config import WorldConfig
from r3jax.world.scene import Scene
from r3jax.world.verify import verify

SCORES = ("v_strict", "v_frac")


def score(text: str, scene: Scene, cfg: WorldConfig, kind: str) -> float:
  s = verify(text, scene, cfg)
  return float(s.v_strict) if kind == "v_strict" else float(s.v_frac)


def root_reward(draft: str, scene: Scene, cfg: WorldConfig, kind: str
                ) -> tuple[float, float]:
  """(reward, V) of a reasoning-stage draft."""
  v = score(draft, scene, cfg, kind)
  f = float(verify(draft, scene, cfg).parsed)
  return f * (1.0 + v), v


def read_branch(reflection: str, refined: str | None
                ) -> tuple[bool, bool]:
  """(format ok, stopped) of a reflect [+ refine] output."""
  instruction = reflection.rsplit(" . ", 1)[-1]
  parsed = edit_lib.parse_instruction(instruction)
  if parsed is None:
    return False, True
  if parsed[0] == "stop":
    return refined is None, True
  return refined is not None and bool(refined.strip()), False


def final_caption(draft: str, refined: str | None, stopped: bool) -> str:
  """The caption a rollout leaves: the draft when it stopped or wrote no
  refined caption (an instruction without one is malformed), else the
  refined caption."""
  return draft if stopped or not refined else refined


def branch_reward(v_prev: float, reflection: str, refined: str | None,
                  scene: Scene, cfg: WorldConfig, kind: str, draft: str
                  ) -> tuple[float, float, bool]:
  """(reward, V_new, stopped) of one reflect+refine rollout from `draft`."""
  ok, stopped = read_branch(reflection, refined)
  v_new = v_prev if stopped else score(final_caption(draft, refined, False),
                                       scene, cfg, kind)
  delta = 1.0 if (stopped and v_prev == 1.0) else v_new - v_prev
  return float(ok) * (1.0 + delta), v_new, stopped


def advantages(rewards: Sequence[float], group: int) -> np.ndarray:
  """R - group mean for consecutive groups of `group` rollouts."""
  r = np.asarray(rewards, np.float32)
  if r.size % group:
    raise ValueError(f"{r.size} rewards do not split into groups of {group}")
  g = r.reshape(-1, group)
  return (g - g.mean(axis=1, keepdims=True)).reshape(-1)
