"""Pipelines that chain data, models, training, pruning and verification."""

from abcrown_plugins.pipeline.iterative import last_checkpoint, output_dir_for, run_pipeline

__all__ = ["last_checkpoint", "output_dir_for", "run_pipeline"]
