"""Runs: a run directory's files (config, metrics, checkpoints), loading a run back, and the
shipped `zoo:NAME` models."""

from vaekit.runs.run_dir import LoadedRun, load_run

__all__ = ["LoadedRun", "load_run"]
