"""Error hierarchy. The CLI maps these to exit codes: input/config problems -> 2, failed gates -> 1,
our own bug (a pass wrote a model that fails the back door, or an unexpected exception) -> 3."""
from __future__ import annotations


class OnnxCompressError(Exception):
    """Base class. The message is one line naming the problem and, where possible, the fix."""

    exit_code = 2


class ConfigError(OnnxCompressError):
    """A config file or flag value is wrong (unknown key, wrong type, out of range)."""


class InputError(OnnxCompressError):
    """An input file or data source is missing, unreadable, or does not fit the model."""


class ExportError(OnnxCompressError):
    """torch -> ONNX export failed or does not match torch numerically."""


class PassError(OnnxCompressError):
    """A graph pass failed; the message names the pass and the passes that ran before it. Our bug: exit 3."""

    exit_code = 3


class MissingDependency(OnnxCompressError):
    """An optional dependency (torch, an execution provider) is not installed."""


class AccuracyRegression(OnnxCompressError):
    """A validation gate failed. Exit code 1: the tool worked, the model did not pass."""

    exit_code = 1


class InternalError(OnnxCompressError):
    """Our bug, not the user's: a pass produced a model that fails the back door (checker, ORT load,
    one inference), or code raised something we did not expect. The message names the pass and, where
    known, the first offending node. Nothing is written."""

    exit_code = 3
