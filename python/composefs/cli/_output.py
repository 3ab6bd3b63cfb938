"""What the command prints on stderr besides errors: log records and pull progress.

Log records: the library logs through :mod:`logging` under the ``composefs`` logger (with a
``NullHandler``, :mod:`composefs._log`); a run of the command adds a handler on stderr for its
duration (:func:`logging_to_stderr`): warnings by default, ``-v`` each step, layer and HTTP
request, ``-vv`` debug details (``-q`` changes nothing here: warnings stay).

Progress of a pull (:func:`pull_progress`): on a terminal, one bar per layer and an overall
line (bytes, rate, ETA), redrawn in place (:class:`TerminalProgress`); otherwise one plain line
per event (:class:`PlainProgress`), so that a log of the run shows where it is. ``-q`` turns
both off. The renderer is hand-made rather than rich's or tqdm's: it costs nothing at
start-up, draws several bars updated from worker threads under one lock, and log lines are
written above the bars through the same lock (see docs/internals.md).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from composefs._text import human_bytes, printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import TextIO

    from composefs.oci.pull import PullEvent

__all__ = [
    "PlainProgress",
    "TerminalProgress",
    "logging_to_stderr",
    "pull_progress",
]


# -- log records ---------------------------------------------------------------------------------


class _LogState:
    """The handler of one run: installed at once with ``-v``, else when the library first
    logs (:mod:`composefs._loghook`); log lines go to ``write`` while it is set."""

    def __init__(self, verbosity: int) -> None:
        self.verbosity = verbosity
        self.start = time.time()
        self.write: Callable[[str], None] | None = None
        self.uninstall: Callable[[], None] | None = None

    def install(self) -> None:
        from composefs.cli import _loghandler

        if self.uninstall is None:
            self.uninstall = _loghandler.install(self.verbosity, self.start, lambda: self.write)


_current: _LogState | None = None


@contextlib.contextmanager
def logging_to_stderr(verbosity: int) -> Iterator[None]:
    """The ``composefs`` logger's records at ``verbosity`` (-1 quiet, 0 default, 1 ``-v``,
    2+ ``-vv``) on stderr while the block runs; the logger is left as it was found.

    :mod:`logging` is imported only if something logs: at once with ``-v``; otherwise when
    :mod:`composefs._log` is first imported (the handler waits in
    :mod:`composefs._loghook`), so that the commands that never log do not pay for it.
    """
    global _current
    from composefs import _loghook

    state = _LogState(verbosity)
    saved = _current
    _current = state
    if verbosity > 0 or "composefs._log" in sys.modules:
        state.install()
    else:
        _loghook.on_first_use.append(state.install)
    try:
        yield
    finally:
        _current = saved
        with contextlib.suppress(ValueError):
            _loghook.on_first_use.remove(state.install)
        if state.uninstall is not None:
            state.uninstall()


@contextlib.contextmanager
def _log_through(write: Callable[[str], None]) -> Iterator[None]:
    """Log lines go to ``write`` (a progress display that redraws around them)."""
    state = _current
    if state is None:
        yield
        return
    saved = state.write
    state.write = write
    try:
        yield
    finally:
        state.write = saved


# -- pull progress --------------------------------------------------------------------------


def _short(digest: str) -> str:
    """``sha256:`` and the first 12 hex digits: enough to tell layers apart."""
    algorithm, _, hexdigest = digest.partition(":")
    return printable(f"{algorithm}:{hexdigest[:12]}" if hexdigest else digest[:19])


class _Layer:
    __slots__ = ("done", "label", "started", "status", "total")

    def __init__(self, label: str, total: int | None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.status = "waiting"  # waiting, importing, done, present
        self.started = 0.0


class _Tracker:
    """Layer states and the overall byte count, fed by :class:`~composefs.oci.pull.PullEvent`."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.layers: dict[str, _Layer] = {}

    def update(self, ev: PullEvent) -> _Layer:
        layer = self.layers.get(ev.id)
        if layer is None:
            layer = _Layer(_short(getattr(ev, "digest", "") or ev.id), ev.total)
            self.layers[ev.id] = layer
            self.order.append(ev.id)
        elif getattr(ev, "digest", "") and layer.status == "waiting":
            layer.label = _short(ev.digest)
        if ev.total is not None:
            layer.total = ev.total
        if ev.kind == "started":
            layer.status, layer.done, layer.started = "importing", 0, time.monotonic()
        elif ev.kind == "progress":
            layer.status, layer.done = "importing", max(layer.done, ev.transferred)
        elif ev.kind == "done":
            layer.status = "done"
            layer.done = layer.total if layer.total is not None else ev.transferred
        elif ev.kind == "skipped":
            layer.status = "present"
        return layer

    def totals(self) -> tuple[int, int]:
        """Bytes done and bytes to transfer, over the layers not already present."""
        done = total = 0
        for layer in self.layers.values():
            if layer.status == "present":
                continue
            total += layer.total or 0
            done += layer.done
        return done, total


class PlainProgress:
    """One line per event, for a log (stderr not a terminal)::

    Copying blob sha256:3f4a5b6c7d8e... 12.00 MiB
    Blob sha256:3f4a5b6c7d8e... done (12.00 MiB in 1.2 s)
    Storing manifest
    """

    def __init__(self, out: TextIO) -> None:
        import threading  # not at start-up: only a pull shows progress

        self.out = out
        self.lock = threading.Lock()
        self.tracker = _Tracker()

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def log_line(self, text: str) -> None:
        with self.lock:
            self._line(text)

    def event(self, ev: PullEvent) -> None:
        with self.lock:
            if ev.kind == "message":
                self._line(printable(ev.message))
                return
            layer = self.tracker.update(ev)
            size = human_bytes(layer.total) if layer.total is not None else "size unknown"
            if ev.kind == "started":
                self._line(f"Copying blob {layer.label}... {size}")
            elif ev.kind == "done":
                elapsed = time.monotonic() - layer.started if layer.started else 0.0
                self._line(f"Blob {layer.label}... done ({size} in {elapsed:.1f} s)")
            elif ev.kind == "skipped":
                self._line(f"Blob {layer.label}... already present")

    def close(self) -> None:
        pass


class TerminalProgress:
    """One bar per layer and an overall line, redrawn in place at most ten times a second::

        sha256:3f4a5b6c7d8e [########------------]  4.00 MiB / 12.00 MiB
        sha256:0123456789ab already present
        Total               [####----------------]  4.00 MiB / 20.00 MiB  2.10 MiB/s  ETA 0:08

    Messages and log lines are written above the bars. Only whole lines shorter than the
    terminal are written (nothing wraps), the cursor is never hidden, and :meth:`close` leaves
    the final state on screen: an interrupted pull leaves a clean terminal.
    """

    #: seconds of history behind the rate
    WINDOW = 5.0

    def __init__(self, out: TextIO) -> None:
        import threading  # not at start-up: only a pull shows progress

        self.out = out
        self.lock = threading.Lock()
        self.tracker = _Tracker()
        self.drawn = 0
        self.last = 0.0
        self.samples: list[tuple[float, int]] = []
        #: when the first layer started, when :meth:`close` drew the final state
        self.started: float | None = None
        self.finished: float | None = None

    def log_line(self, text: str) -> None:
        with self.lock:
            self._clear()
            self.out.write(text + "\n")
            self._draw()

    def event(self, ev: PullEvent) -> None:
        with self.lock:
            if ev.kind == "message":
                self._clear()
                self.out.write(printable(ev.message) + "\n")
                self._draw()
                return
            self.tracker.update(ev)
            now = time.monotonic()
            if ev.kind == "started" and self.started is None:
                self.started = now
            self._sample(now)
            if ev.kind == "progress" and now - self.last < 0.1:
                return
            self.last = now
            self._clear()
            self._draw()

    def _sample(self, now: float) -> None:
        done, _ = self.tracker.totals()
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] > self.WINDOW:
            del self.samples[0]

    def _rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        if t1 - t0 < 0.2:
            return None
        return (b1 - b0) / (t1 - t0)

    def _clear(self) -> None:
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def _lines(self, width: int, height: int) -> list[str]:
        tracker = self.tracker
        keys = tracker.order
        room = max(1, height - 3)  # the overall line, a summary line, the cursor's
        hidden: list[str] = []
        if len(keys) > room:
            # the layers being imported first, then the most recently queued others
            active = [k for k in keys if tracker.layers[k].status == "importing"][:room]
            others = [k for k in keys if k not in active]
            shown = set(active) | set(others[len(others) - (room - len(active)) :])
            hidden = [k for k in keys if k not in shown]
            keys = [k for k in keys if k in shown]
        done, total = tracker.totals()
        overall = ""
        if total:
            overall = _sizes(done, total)
            rate = self._rate()
            if self.finished is not None:  # the whole run: its time and average rate
                elapsed = self.finished - (self.started or self.finished)
                if elapsed > 0 and done:
                    overall += f"  {human_bytes(done / elapsed)}/s"
                overall += f"  in {elapsed:.1f} s"
            elif rate is not None:
                overall += f"  {human_bytes(rate)}/s"
                if rate > 0 and done < total:
                    overall += f"  ETA {_duration((total - done) / rate)}"
        # one bar width for every line: what the longest text after a bar leaves
        longest = max(len(overall), len(_sizes(2**40 - 1, 2**40 - 1)))
        bar_width = max(10, min(40, width - 1 - _LABEL - 4 - longest))
        lines = [self._layer_line(tracker.layers[k], bar_width) for k in keys]
        if hidden:
            counts: dict[str, int] = {}
            for k in hidden:
                status = tracker.layers[k].status
                counts[status] = counts.get(status, 0) + 1
            what = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            lines.append(f"... {len(hidden)} more layers ({what})")
        if total:
            lines.append(f"{'Total':<{_LABEL}} {_bar(done, total, bar_width)} {overall}")
        return [line[: width - 1] for line in lines]

    @staticmethod
    def _layer_line(layer: _Layer, bar_width: int) -> str:
        label = f"{layer.label:<{_LABEL}}"
        if layer.status == "importing" and layer.total:
            return f"{label} {_bar(layer.done, layer.total, bar_width)} " + _sizes(
                layer.done, layer.total
            )
        if layer.status == "done":
            size = "" if layer.total is None else " " + human_bytes(layer.total)
            return f"{label} done{size}"
        if layer.status == "present":
            return f"{label} already present"
        if layer.status == "importing":
            return f"{label} importing {human_bytes(layer.done)}"
        return f"{label} waiting"

    def _draw(self) -> None:
        columns, rows = _terminal_size(self.out)
        lines = self._lines(columns, rows)
        for line in lines:
            self.out.write(line + "\n")
        self.drawn = len(lines)
        self.out.flush()

    def close(self) -> None:
        with self.lock:
            now = time.monotonic()
            self._sample(now)
            self.finished = now
            self._clear()
            self._draw()


def _terminal_size(out: TextIO) -> tuple[int, int]:
    """The size of the terminal ``out`` writes to (``COLUMNS``/``LINES`` win, as in
    :func:`shutil.get_terminal_size`, which only looks at stdout)."""
    try:
        size = os.get_terminal_size(out.fileno())
        columns, lines = size.columns, size.lines
    except (AttributeError, OSError, ValueError):
        columns, lines = 80, 24
    env_columns, env_lines = os.environ.get("COLUMNS", ""), os.environ.get("LINES", "")
    columns = (
        int(env_columns)
        if env_columns.isascii()
        and env_columns.isdigit()
        and 0 < len(env_columns) < 6
        and int(env_columns) > 0
        else columns
    )
    lines = (
        int(env_lines)
        if env_lines.isascii()
        and env_lines.isdigit()
        and 0 < len(env_lines) < 6
        and int(env_lines) > 0
        else lines
    )
    return (columns or 80), (lines or 24)


#: the width of a line's label (``sha256:`` and 12 hex digits)
_LABEL = 19


def _bar(done: int, total: int, width: int) -> str:
    filled = min(width, width * done // max(total, 1))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _sizes(done: int, total: int) -> str:
    return f"{human_bytes(done):>10} / {human_bytes(total)}"


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{seconds:02}" if hours else f"{minutes}:{seconds:02}"


@contextlib.contextmanager
def pull_progress(out: TextIO, *, quiet: bool) -> Iterator[Callable[[PullEvent], None] | None]:
    """The progress callback for a pull writing to ``out`` (``None`` with ``quiet``): bars on
    a terminal, plain lines otherwise. Log records go through it while the block runs; the
    display's final state is drawn when the block ends, however it ends."""
    if quiet:
        yield None
        return
    try:
        # a terminal that cannot move the cursor (TERM=dumb: Emacs shells, some CI consoles)
        # gets the plain lines
        tty = out.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        tty = False
    renderer: TerminalProgress | PlainProgress = (
        TerminalProgress(out) if tty else PlainProgress(out)
    )
    try:
        with _log_through(renderer.log_line):
            yield renderer.event
    finally:
        renderer.close()
