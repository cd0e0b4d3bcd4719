"""Datasets: the MicroLens layout (read and checked), preprocessing and the leave-one-out split,
a content-driven synthetic generator writing the same layout, and dataset statistics."""

from linkedout.data.microlens import (
    DatasetError,
    Issue,
    MicroLensDataset,
    ValidationReport,
    find_prefix,
    load_microlens,
    validate_microlens,
)
from linkedout.data.split import EvalSet, SplitData, leave_one_out, preprocess, training_examples
from linkedout.data.stats import dataset_stats, format_stats
from linkedout.data.synth import SynthConfig, generate

__all__ = [
    "DatasetError",
    "EvalSet",
    "Issue",
    "MicroLensDataset",
    "SplitData",
    "SynthConfig",
    "ValidationReport",
    "dataset_stats",
    "find_prefix",
    "format_stats",
    "generate",
    "leave_one_out",
    "load_microlens",
    "preprocess",
    "training_examples",
    "validate_microlens",
]
