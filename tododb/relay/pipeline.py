"""Ranges of log positions: read ahead by the decoders, taken back and recorded in order.

The range split is what the library's subscription (one cursor, one thread) cannot do:
it lets several decoder processes read and encode at once while the relay's own process
sends the oldest range. A range is sent only after the previous one was acknowledged,
so a re-send never overtakes newer events of the same todo, and positions are recorded
in order, each while the next range is being sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from tododb.relay.decoding import Encoded

Encode = Callable[[int, int, int], "asyncio.Future[Encoded]"]
"""(first, last, partitions) → the range, being encoded (in a decoder or a thread)."""


@dataclass(frozen=True)
class Range:
    future: asyncio.Future[Encoded]
    first: int
    last: int
    partitions: int


class Pipeline:
    """Dispatch state of the relay loop: the head seen, what was dispatched and recorded."""

    def __init__(self, encode: Encode, position: int, ahead: int, size: int) -> None:
        self.encode = encode
        self.ahead = ahead
        self.size = size
        self.head = self.dispatched = self.recorded = position
        self.pending: deque[Range] = deque()
        self.recording: asyncio.Future[None] | None = None

    def caught_up(self) -> bool:
        """Everything up to the head seen is dispatched (time to look at the head again)."""
        return self.dispatched >= self.head

    def wants(self) -> bool:
        return len(self.pending) < self.ahead and self.dispatched < self.head

    def dispatch(self, partitions: int) -> None:
        """Up to ``ahead`` ranges of at most ``size`` positions, encoded meanwhile."""
        while self.wants():
            first, last = self.dispatched + 1, min(self.head, self.dispatched + self.size)
            future = self.encode(first, last, partitions)
            self.pending.append(Range(future, first, last, partitions))
            self.dispatched = last

    def take(self) -> Range | None:
        """The oldest range dispatched, if any."""
        return self.pending.popleft() if self.pending else None

    async def record(self, last: int, write: Callable[[int], None]) -> None:
        """Record ``last`` once the previous record landed, without waiting for this one:
        a crash before it commits only means re-sending that range."""
        if last <= self.recorded:
            return
        await self.settle()
        self.recording = asyncio.ensure_future(asyncio.to_thread(write, last))
        self.recorded = last

    async def settle(self) -> None:
        """Wait for the record in flight (raises if it failed)."""
        if self.recording is not None:
            recording, self.recording = self.recording, None
            await recording

    def rewind(self) -> None:
        """Start again from position 1: what was read ahead is dropped."""
        self._cancel()
        self.dispatched = self.recorded = 0

    async def close(self) -> None:
        """Drop what was read ahead; let the last record land (or fail: we re-send)."""
        self._cancel()
        with contextlib.suppress(Exception):
            await self.settle()

    def _cancel(self) -> None:
        for pending in self.pending:
            pending.future.cancel()
        self.pending.clear()
