"""Call statistics of one host: counts, errors by kind, error rates over sliding windows, latency
percentiles, fallbacks and breaker transitions, per plugin and function.

The counts live in per-thread shards that only their own thread writes, merged when they are
read: a call adds to its thread's cells without taking any lock shared with other threads. The
memory is bounded whatever the number of calls: a latency histogram of fixed buckets, windows of
one-second slots over the last :data:`WINDOW_SPAN` seconds, at most :data:`MAX_FUNCTIONS`
functions per plugin (others are counted under :data:`OTHER_FUNCTIONS`), and the cells of a
thread that ended folded into one.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import compress, repeat
from operator import add, ge
from typing import Any, Final, TypeVar, final

import attrs

__all__ = [
    "LATENCY_BOUNDS",
    "LATENCY_BUCKETS",
    "MAX_FUNCTIONS",
    "OTHER_FUNCTIONS",
    "PENDING_MAX",
    "WINDOWS",
    "WINDOW_SPAN",
    "CallTally",
    "Cell",
    "FunctionStats",
    "Stats",
    "combined",
    "percentile",
]

LATENCY_BUCKETS: Final = (
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    float("inf"),
)
"""Upper bounds, in seconds, of the latency histogram's published buckets."""

_GROWTH: Final = 1.05
LATENCY_BOUNDS: Final = tuple(
    sorted(
        {round(1e-6 * _GROWTH**step, 12) for step in range(int(math.log(1e5 / 1e-6, _GROWTH)) + 1)}
        | set(LATENCY_BUCKETS)
    )
)
"""Upper bounds of the fine buckets the latencies are counted in: 5 % apart from 1 µs to a
little over a day, the published bounds among them (so that those buckets are exact sums). A
percentile read from them is within 5 % of the true one."""

WINDOW_SPAN: Final = 300
"""Seconds of history the windows keep (in one-second slots)."""

WINDOWS: Final = {"1m": 60, "5m": 300}
"""The error-rate windows of :meth:`CallTally.stats`, by name."""

MAX_FUNCTIONS: Final = 1000
"""Functions counted per plugin under their own name (function names come from callers)."""

OTHER_FUNCTIONS: Final = "(other)"
"""Where the calls of a plugin's functions past :data:`MAX_FUNCTIONS` are counted."""

PERCENTILES: Final = (50, 95, 99)


@final
class Cell:
    """The counts of one (plugin, function) in one shard. Only its thread writes it; other
    threads read it through :meth:`snapshot` and :meth:`window`.

    A call that ends with its value, the common case, only appends its duration to
    :attr:`pending`, and one that ends with an error (a refusal of an open breaker, most often)
    to :attr:`pending_errors`: the thread folds them into the counts once a second
    (:meth:`turn`), or once :data:`PENDING_MAX` of a kind are waiting, sorted, so that the
    histogram's buckets are found once per bucket, not once per call. Readers add what is
    pending to what they read, and :attr:`turns`, odd while a fold runs, tells them to read
    again.
    """

    __slots__ = (
        "attempt_errors",
        "calls",
        "failures",
        "fallbacks",
        "latency",
        "latency_sum",
        "outcomes",
        "pending",
        "pending_errors",
        "retries",
        "second",
        "seconds",
        "transitions",
        "turns",
        "until",
        "values",
    )

    def __init__(self) -> None:
        self.values = 0
        """Calls that ended with their value (each is also an attempt that succeeded), but for
        those pending."""
        self.outcomes: dict[str, int] = {}
        """Calls that ended otherwise, by outcome (``fallback``, ``error``)."""
        self.attempt_errors: dict[str, int] = {}
        """Failed attempts, by the kind of their error."""
        self.retries = 0
        self.fallbacks: dict[str, int] = {}
        self.transitions: dict[str, int] = {}
        """Breaker transitions, by the state moved to."""
        self.latency = [0] * len(LATENCY_BOUNDS)
        self.latency_sum = 0.0
        self.seconds = [-1] * WINDOW_SPAN
        """The second each window slot counts (slot = second modulo the span)."""
        self.calls = [0] * WINDOW_SPAN
        self.failures = [0] * WINDOW_SPAN
        self.pending: list[float] = []
        """The durations of the calls that ended with their value in :attr:`second`, not yet
        counted above."""
        self.pending_errors: list[float] = []
        """The same, of the calls that ended with an error."""
        self.second = -1
        """The second whose calls are pending."""
        self.until = -math.inf
        """The end of :attr:`second`: a call that ends at or after it turns the cell first."""
        self.turns = 0
        """Odd while the counts change in several steps (a fold, a merge)."""

    def turn(self, time: float) -> None:
        """Fold the pending calls into the counts, and count those that end from now on in the
        second of ``time``. Only the cell's thread calls it."""
        self.turns += 1
        try:
            pending, errors = self.pending, self.pending_errors
            self.count_ended("value", pending, self.second)
            self.count_ended("error", errors, self.second)
            del pending[:], errors[:]
            second = self.second = int(time)
            self.until = second + 1
        finally:
            self.turns += 1

    def count_ended(self, outcome: str, durations: Sequence[float], second: int) -> None:
        """Count calls that ended in ``second`` with ``outcome`` (``value``, ``error``,
        ``fallback``), taking these durations. Only the cell's thread calls it (or the
        thread that holds a copy)."""
        count = len(durations)
        if not count:
            return
        if outcome == "value":
            self.values += count
        else:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + count
        self.latency_sum += math.fsum(durations)
        latency = self.latency
        # Sorted (in C), the calls of one bucket are a run: a search per bucket, not per call.
        ordered = sorted(durations)
        start = 0
        while start < count:
            index = bisect_left(LATENCY_BOUNDS, ordered[start])
            # At least one: a duration no bound compares with (NaN) still ends the loop.
            stop = max(bisect_right(ordered, LATENCY_BOUNDS[index], start), start + 1)
            latency[index] += stop - start
            start = stop
        slot = second % WINDOW_SPAN
        held = self.seconds[slot]
        if held != second:
            if held > second:
                return  # older than what the window holds
            self.roll(slot, second)
        self.calls[slot] += count
        if outcome != "value":
            self.failures[slot] += count

    def roll(self, slot: int, second: int) -> None:
        """Start counting ``second`` in ``slot`` (what it held is older than the span)."""
        self.seconds[slot] = second
        self.calls[slot] = 0
        self.failures[slot] = 0

    def snapshot(self) -> Cell:
        """A copy of the counts with the pending calls counted: what a reader reads, whichever
        thread writes the cell meanwhile."""
        return self._consistent(self._copy)

    def _copy(self) -> Cell:
        copy = Cell()
        copy.values = self.values
        copy.retries = self.retries
        copy.outcomes = dict(self.outcomes)
        copy.attempt_errors = dict(self.attempt_errors)
        copy.fallbacks = dict(self.fallbacks)
        copy.transitions = dict(self.transitions)
        copy.latency = self.latency[:]
        copy.latency_sum = self.latency_sum
        copy.seconds = self.seconds[:]
        copy.calls = self.calls[:]
        copy.failures = self.failures[:]
        copy.count_ended("value", self.pending[:], self.second)
        copy.count_ended("error", self.pending_errors[:], self.second)
        return copy

    def _consistent(self, read: Callable[[], _Read]) -> _Read:
        # A read that overlapped a fold (the count of turns changed, or was odd) is made again;
        # the GIL is let go meanwhile, so that the thread folding finishes. A thread that
        # reads its own cell in the middle of a fold (a signal handler) reads it as it is.
        for _ in range(_READ_TRIES):
            turns = self.turns
            if not turns & 1:
                found = read()
                if self.turns == turns:
                    return found
            time.sleep(0)
        return read()

    def merge(self, other: Cell) -> None:
        """Add another shard's counts (of a thread that ended) to these."""
        other = other.snapshot()
        self.turns += 1
        try:
            self.values += other.values
            self.retries += other.retries
            for mine, theirs in (
                (self.outcomes, other.outcomes),
                (self.attempt_errors, other.attempt_errors),
                (self.fallbacks, other.fallbacks),
                (self.transitions, other.transitions),
            ):
                for key, count in theirs.items():
                    mine[key] = mine.get(key, 0) + count
            self.latency = list(map(add, self.latency, other.latency))
            self.latency_sum += other.latency_sum
            for slot, second in enumerate(other.seconds):
                if second < 0:
                    continue
                if self.seconds[slot] == second:
                    self.calls[slot] += other.calls[slot]
                    self.failures[slot] += other.failures[slot]
                elif self.seconds[slot] < second:
                    self.seconds[slot] = second
                    self.calls[slot] = other.calls[slot]
                    self.failures[slot] = other.failures[slot]
        finally:
            self.turns += 1

    def window(self, now: float, seconds: int) -> tuple[int, int]:
        """Calls and failed calls of the last ``seconds`` seconds before ``now``."""
        return self._consistent(lambda: self._window(now, seconds))

    def _window(self, now: float, seconds: int) -> tuple[int, int]:
        current = int(now)
        oldest = current - min(seconds, WINDOW_SPAN) + 1
        first, last = oldest % WINDOW_SPAN, current % WINDOW_SPAN
        spans = ((first, last + 1),) if first <= last else ((first, WINDOW_SPAN), (0, last + 1))
        calls = failures = 0
        if oldest <= self.second <= current:
            failures = len(self.pending_errors)
            calls = len(self.pending) + failures
        # Summed in C (compress, map): the alert rules read a window on every failed call.
        for start, end in spans:
            recent = list(map(ge, self.seconds[start:end], repeat(oldest)))
            calls += sum(compress(self.calls[start:end], recent))
            failures += sum(compress(self.failures[start:end], recent))
        return calls, failures


_Read = TypeVar("_Read")

PENDING_MAX: Final = 4096
"""Calls a cell keeps pending at most: with more, the next one folds them (a clock that stands
still, a fake one in tests, would otherwise keep them all)."""

_READ_TRIES: Final = 1000


Routes = dict[str, dict[str, Cell]]
"""A shard: by plugin, then function, the cells of one thread."""


class _Token:
    """Kept in a thread's local storage: collected when the thread ends."""

    __slots__ = ("__weakref__",)


class CallTally:
    """The counts of every call of one host, sharded by thread."""

    def __init__(self) -> None:
        self.local = threading.local()
        """Its ``routes`` attribute is the calling thread's shard, once :meth:`shard` made it."""
        self._lock = threading.Lock()
        self._live: dict[int, Routes] = {}
        self._ended: list[Routes] = []
        """Shards of threads that ended, appended by a finalizer (wherever it runs, it takes
        no lock) and folded into ``_retired`` by the next reader."""
        self._retired: Routes = {}

    def shard(self) -> Routes:
        """The calling thread's shard, made on its first call."""
        try:
            routes: Routes = self.local.routes
        except AttributeError:
            routes = {}
            token = _Token()
            self.local.routes = routes
            self.local.token = token
            with self._lock:
                self._fold()
                self._live[id(routes)] = routes
            weakref.finalize(token, self._ended.append, routes)
        return routes

    def cell(self, plugin: str, function: str) -> Cell:
        """The calling thread's cell of (plugin, function), made on first use."""
        routes = self.shard()
        by_function = routes.get(plugin)
        if by_function is None:
            by_function = routes[plugin] = {}
        cell = by_function.get(function)
        if cell is None:
            if len(by_function) >= MAX_FUNCTIONS and function != OTHER_FUNCTIONS:
                return self.cell(plugin, OTHER_FUNCTIONS)
            cell = by_function[function] = Cell()
        return cell

    def _fold(self) -> None:
        # Called with the lock held.
        while self._ended:
            routes = self._ended.pop()
            self._live.pop(id(routes), None)
            for plugin, by_function in routes.items():
                mine = self._retired.setdefault(plugin, {})
                for function, cell in by_function.items():
                    mine.setdefault(function, Cell()).merge(cell)

    def cells(self) -> dict[tuple[str, str], list[Cell]]:
        """Every shard's cell, by (plugin, function), as a snapshot (:meth:`Cell.snapshot`)."""
        shards = self._shards()
        found: dict[tuple[str, str], list[Cell]] = {}
        for routes in shards:
            for plugin, by_function in list(routes.items()):
                for function, cell in list(by_function.items()):
                    found.setdefault((plugin, function), []).append(cell.snapshot())
        return found

    def window(self, plugin: str, now: float, seconds: int) -> tuple[int, int]:
        """A plugin's calls and failed calls (every function) over the last ``seconds``."""
        calls = failures = 0
        for routes in self._shards():
            for cell in list(routes.get(plugin, {}).values()):
                made, failed = cell.window(now, seconds)
                calls += made
                failures += failed
        return calls, failures

    def _shards(self) -> list[Routes]:
        if self._ended:
            with self._lock:
                self._fold()
        # list() of a dict's values is made in C: threads adding a shard meanwhile wait.
        return [self._retired, *list(self._live.values())]

    def stats(
        self,
        now: float,
        breakers: Mapping[tuple[str, str], str] | None = None,
    ) -> Stats:
        """Every (plugin, function) as :class:`FunctionStats`, at ``now`` (the policy clock).

        :param breakers: the state of each circuit breaker made so far; a function with a
            breaker and no call yet is listed too.
        """
        return combined([(self, now, breakers or {})])


def combined(
    parts: Iterable[tuple[CallTally, float, Mapping[tuple[str, str], str]]],
) -> Stats:
    """The statistics of several tallies (several hosts: a fuzz run makes one per example) as
    one: counts and histograms summed, each tally's windows read at its own ``now`` (each host
    has its own clock), the breaker state of the last tally that has one.

    :param parts: (tally, its clock's now, its breakers' states by (plugin, function)).
    """
    found: dict[tuple[str, str], list[tuple[Cell, float]]] = {}
    states: dict[tuple[str, str], str] = {}
    latest = 0.0
    for tally, now, breakers in parts:
        latest = max(latest, now)
        for key, cells in tally.cells().items():
            found.setdefault(key, []).extend((cell, now) for cell in cells)
        for key, state in breakers.items():
            states[key] = state
            found.setdefault(key, [])
    functions = tuple(
        FunctionStats.of(key[0], key[1], found[key], states.get(key)) for key in sorted(found)
    )
    return Stats(latest, functions)


def _summed(dicts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in dicts:
        for key, count in list(counts.items()):
            total[key] = total.get(key, 0) + count
    return dict(sorted(total.items()))


def percentile(counts: list[int], total: int, rank: float) -> float | None:
    """The ``rank`` percentile (0-100) of a histogram over :data:`LATENCY_BOUNDS`: the upper
    bound of the bucket it falls in (None without observations)."""
    if total <= 0:
        return None
    wanted = max(1, math.ceil(total * rank / 100))
    running = 0
    for index, count in enumerate(counts):
        running += count
        if running >= wanted:
            return LATENCY_BOUNDS[index]
    return LATENCY_BOUNDS[-1]


@attrs.frozen
class FunctionStats:
    """The statistics of one (plugin, function)."""

    plugin: str
    function: str
    calls: int
    """Calls that ended (with a value, a fallback's value or an error)."""
    outcomes: dict[str, int]
    """Calls by how they ended: ``value``, ``fallback``, ``error``."""
    errors: dict[str, int]
    """Failed attempts by the kind of their error."""
    error_rate: dict[str, float | None]
    """By window (``1m``, ``5m``): the share of calls that did not end with the plugin's own
    value (None: no call in the window)."""
    window_calls: dict[str, int]
    """By window: how many calls ended in it."""
    latency: dict[str, float | None]
    """``p50``, ``p95``, ``p99`` of the calls' durations in seconds (bucket upper bounds, 5 %
    apart), and ``mean``."""
    retries: int
    fallbacks: dict[str, int]
    """Calls a fallback answered, by strategy."""
    breaker: str | None
    """The circuit breaker's state (None: no breaker made yet)."""
    transitions: dict[str, int]
    """Breaker transitions, by the state moved to."""

    @classmethod
    def of(
        cls, plugin: str, function: str, timed: list[tuple[Cell, float]], breaker: str | None
    ) -> FunctionStats:
        """Merged from the cells of every shard, each with the time its windows end."""
        cells = [cell for cell, _ in timed]
        values = sum(cell.values for cell in cells)
        outcomes = _summed(cell.outcomes for cell in cells)
        if values:
            outcomes = {"value": values, **outcomes}
        histogram = [0] * len(LATENCY_BOUNDS)
        for cell in cells:
            for index, count in enumerate(cell.latency):
                if count:
                    histogram[index] += count
        observed = sum(histogram)
        latency: dict[str, float | None] = {
            f"p{rank}": percentile(histogram, observed, rank) for rank in PERCENTILES
        }
        latency["mean"] = sum(cell.latency_sum for cell in cells) / observed if observed else None
        rates: dict[str, float | None] = {}
        counts: dict[str, int] = {}
        for name, seconds in WINDOWS.items():
            calls = failures = 0
            for cell, now in timed:
                made, failed = cell.window(now, seconds)
                calls += made
                failures += failed
            counts[name] = calls
            rates[name] = failures / calls if calls else None
        return cls(
            plugin=plugin,
            function=function,
            calls=sum(outcomes.values()),
            outcomes=outcomes,
            errors=_summed(cell.attempt_errors for cell in cells),
            error_rate=rates,
            window_calls=counts,
            latency=latency,
            retries=sum(cell.retries for cell in cells),
            fallbacks=_summed(cell.fallbacks for cell in cells),
            breaker=breaker,
            transitions=_summed(cell.transitions for cell in cells),
        )


@attrs.frozen
class Stats:
    """What :meth:`PluginHost.stats <wasm_plugins.PluginHost.stats>` returns."""

    time: float
    """When it was read (the policy clock)."""
    functions: tuple[FunctionStats, ...]
    """One entry per (plugin, function) called or with a breaker, sorted."""

    def of(self, plugin: str, function: str) -> FunctionStats | None:
        """The entry of (plugin, function), if it has one."""
        for entry in self.functions:
            if entry.plugin == plugin and entry.function == function:
                return entry
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return {
            "time": self.time,
            "functions": [attrs.asdict(entry) for entry in self.functions],
        }

    def rows(self) -> list[list[str]]:
        """A table's rows, the header first: one row per (plugin, function)."""
        header = [
            "plugin",
            "function",
            "calls",
            "errors",
            "error rate 1m",
            "error rate 5m",
            "p50",
            "p95",
            "p99",
            "fallbacks",
            "breaker",
            "transitions",
        ]
        rows = [header]
        for entry in self.functions:
            rows.append(
                [
                    entry.plugin,
                    entry.function,
                    str(entry.calls),
                    _counts(entry.errors),
                    _rate(entry.error_rate["1m"]),
                    _rate(entry.error_rate["5m"]),
                    *(_duration(entry.latency[f"p{rank}"]) for rank in PERCENTILES),
                    _counts(entry.fallbacks),
                    entry.breaker or "-",
                    _counts(entry.transitions),
                ]
            )
        return rows


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key} {count}" for key, count in counts.items()) or "-"


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"
