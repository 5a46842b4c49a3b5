"""The one progress protocol. Library code never prints: it reports steps ("quantize", "ranking layers ...")
and, for long loops, ticks (done, total, what) to a `Progress` it is given; the CLI renders them (stderr
lines, a progress bar), the Python API may pass nothing.

Functions deep in the library take only the half they use, typed `Say` or `Tick` (below); `progress_of`
turns what a caller passed (None, a plain `fn(message)`, or a Progress) into a Progress, whose `say` and
`tick` are handed down."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, runtime_checkable

Say = Callable[[str], None]  # a step, in words
Tick = Callable[[int, int, str], None]  # (done, total, what) of a long loop


@runtime_checkable
class Progress(Protocol):
    def say(self, message: str) -> None: ...

    def tick(self, done: int, total: int, what: str) -> None: ...


@dataclass(frozen=True)
class Callbacks:
    """A Progress made of plain callbacks; either may be None (that half is dropped)."""

    on_say: Optional[Say] = None
    on_tick: Optional[Tick] = None

    def say(self, message: str) -> None:
        if self.on_say is not None:
            self.on_say(message)

    def tick(self, done: int, total: int, what: str) -> None:
        if self.on_tick is not None:
            self.on_tick(done, total, what)

    @property
    def ticks(self) -> Optional[Tick]:
        """The tick callback for functions that take `progress=(done, total, what)`, None when nobody listens
        (those functions then skip their bookkeeping)."""
        return self.on_tick


SILENT = Callbacks()


def progress_of(obj: Any) -> Callbacks:
    """None -> SILENT; a Callbacks -> itself; a Progress -> its two methods; a plain callable -> its messages."""
    if obj is None:
        return SILENT
    if isinstance(obj, Callbacks):
        return obj
    if isinstance(obj, Progress):
        return Callbacks(obj.say, obj.tick)
    if callable(obj):
        return Callbacks(on_say=obj)
    raise TypeError(f"progress must be a Progress or a callable fn(message), not {type(obj).__name__}")
