"""The `onnxcompress` command: each subcommand parses flags into config objects and calls the library."""
from __future__ import annotations

import click

from .. import __version__
from . import evaluate, export, inspect, prune, quant, stages, sweep, target, train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxcompress")
def main() -> None:
    """Turn a trained model into a small, fast, verified ONNX model."""


for _module in (export, stages, prune, quant, inspect, evaluate, train, target, sweep):
    for _cmd in _module.COMMANDS:
        main.add_command(_cmd)
