"""Shared CLI plumbing: error -> exit code mapping, JSON output. Commands only parse and call."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from ..errors import OnnxCompressError
from ..report import to_json


def handle_errors(fn):
    """Our errors -> one line on stderr and their exit code (2 input, 1 gate). No tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OnnxCompressError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except MemoryError:
            click.echo("error: out of memory; use smaller --batch-size or fewer calibration samples", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("error: interrupted; no output was written", err=True)
            sys.exit(130)

    return wrapper


def emit(as_json: bool, payload: dict, text: str) -> None:
    click.echo(to_json(payload) if as_json else text)


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")


def existing(path: str) -> Path:
    return Path(path)
