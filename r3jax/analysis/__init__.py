"""What notebooks and the study report read: a run's interference
statistics, a study's results, and the R3 loop by round."""

from r3jax.analysis import interference, rounds, study

__all__ = ["interference", "rounds", "study"]
