"""Multi-seed studies over the configs in configs/: a registry of studies
(studies.py), a runner (run.py) and the RESULTS.md report (report.py)."""
