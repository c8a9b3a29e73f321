"""Gradient interference between training objectives: per-task gradients,
Gram statistics measured inside the step, and aggregation methods."""
