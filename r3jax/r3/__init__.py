"""Reason -> reflect -> refine for image-to-text: training sequences, the
consistency loss between the reflect and refine stages, and the loop.
Importing the package registers the R3 tasks (r3jax.r3.tasks)."""

from r3jax.r3 import tasks  # noqa: F401  (registers the R3 tasks)
