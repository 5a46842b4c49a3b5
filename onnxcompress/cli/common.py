"""Shared CLI plumbing: error -> exit code mapping, JSON output. Commands only parse and call."""
from __future__ import annotations

import functools
import sys
import tempfile
import traceback

import click

from ..errors import InternalError, OnnxCompressError
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
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors: click prints them (exit 2)
        except KeyboardInterrupt:
            click.echo("error: interrupted; no output was written", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - our bug: one line, the traceback kept in a file for the report
            where = _save_traceback()
            click.echo(f"error: internal error in '{fn.__name__.removesuffix('_cmd')}': {type(exc).__name__}: "
                       f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''} "
                       f"(a bug in onnxcompress, not in your input; traceback in {where})", err=True)
            sys.exit(InternalError.exit_code)

    return wrapper


def _save_traceback() -> str:
    fd, path = tempfile.mkstemp(prefix="onnxcompress-traceback-", suffix=".txt")
    with open(fd, "w") as f:
        f.write(traceback.format_exc())
    return path


def emit(as_json: bool, payload: dict, text: str) -> None:
    click.echo(to_json(payload) if as_json else text)


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")


def csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of integers, e.g. 1,8") from None


def input_layout_option(fn):
    """--input-layout on every command that takes data: batch axes and const inputs the shapes do not settle."""
    return click.option(
        "--input-layout", "input_layout", multiple=True, metavar="NAME:AXIS|NAME:const[=V],...",
        help="Input layouts the model's shapes do not settle: the batch axis of an input (state:1 for an LSTM "
             "state [2, N, 128]), or const (fed unchanged in every batch, e.g. sr:const=16000); comma-separated "
             "or repeated.")(fn)


def layout_items(values) -> tuple[str, ...]:
    """--input-layout values -> DataConfig.input_layout items (syntax checked: ConfigError, exit 2)."""
    from ..data import parse_input_layout

    items = tuple(x.strip() for v in values or () for x in str(v).split(",") if x.strip())
    parse_input_layout(items)
    return items
