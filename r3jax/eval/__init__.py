"""Evaluation: metrics on decoded text and the evaluators the loop runs."""
