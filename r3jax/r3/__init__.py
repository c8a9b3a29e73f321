"""Reason -> reflect -> refine for image-to-text: training sequences, the
consistency loss between the reflect and refine stages, and the loop."""
