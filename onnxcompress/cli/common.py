"""Shared CLI plumbing: error -> exit code mapping, JSON output. Commands only parse and call."""
from __future__ import annotations

import functools
import sys
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


def csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of integers, e.g. 1,8") from None
