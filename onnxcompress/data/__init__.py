"""Calibration/validation data: sources -> canonical batches -> the feeds a model takes (its layout).

arrays   .npz/.npy files and folders (format in arrays.py's docstring)
dataset  Dataset (chunks of canonical arrays), random_data
layout   input layouts (batch axis, const, fixed batch size) and `feeds`: the one place that makes
         model inputs from a dataset
"""
from .arrays import LABELS, check_chunk, load_data
from .dataset import Dataset, random_data
from .layout import (Feed, InputLayout, InputSpec, Layout, example_feed, feeds, input_specs, layout_of, model_layout,
                     parse_input_layout, real_input, resolve_layout, samples_of, trim)

__all__ = ["LABELS", "Dataset", "Feed", "InputLayout", "InputSpec", "Layout", "check_chunk", "example_feed", "feeds",
           "input_specs", "layout_of", "load_data", "model_layout", "parse_input_layout", "random_data", "real_input", "resolve_layout",
           "samples_of", "trim"]
