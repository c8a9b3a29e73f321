"""A procedural world of shapes with exact ground truth for every caption."""

from r3jax.world.config import WorldConfig
from r3jax.world.corrupt import (CORRUPTIONS, available_corruptions, corrupt,
                                 counterfactual)
from r3jax.world.examples import generate_example, ita
from r3jax.world.facts import (Fact, Invalid, KindCount, Ref, Relation, Total,
                               checklist)
from r3jax.world.language import captions, describe, reference_facts, vocabulary
from r3jax.world.render import object_mask, render
from r3jax.world.scene import (Object, Scene, sample_scene, scene_from_arrays,
                               scene_to_arrays)
from r3jax.world.verify import CaptionScore, parse_caption, verify
from r3jax.world.vqa import QTYPES, available_qtypes, vqa
