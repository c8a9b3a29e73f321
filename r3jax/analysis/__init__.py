"""What notebooks and the study report read: a run's interference
statistics, a study's results, the R3 loop by round, and a model's
competence gates."""

from r3jax.analysis import competence, interference, rounds, study

__all__ = ["competence", "interference", "rounds", "study"]
