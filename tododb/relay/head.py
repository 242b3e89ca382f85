"""Wake the relay when the event store commits, without polling.

The library's recorder NOTIFYs its channel in every transaction that appends events;
this LISTENs on that channel (as the library's own subscription does) and sets an
asyncio event. The relay then reads the head position and dispatches the new range.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.sql import SQL, Identifier


class CommitSignal:
    def __init__(self, recorder: PostgresApplicationRecorder) -> None:
        self.recorder = recorder
        self.error: BaseException | None = None
        self._woken = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="relay-listen", daemon=True)
        self._thread.start()

    def is_set(self) -> bool:
        """Whether a commit happened since the last ``clear``."""
        return self._woken.is_set()

    def clear(self) -> None:
        """Forget earlier commits: call before reading the head, then ``wait``."""
        self._woken.clear()

    async def wait(self, seconds: float) -> bool:
        """Until a commit after the last ``clear``: True, or False after ``seconds``.

        Raises if LISTEN failed (the relay then resumes from its recorded position).
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), seconds)
        if self.error is not None:
            raise RuntimeError(f"LISTEN on the event store failed: {self.error!r}")
        return self._woken.is_set()

    def close(self) -> None:
        self._halt.set()
        self._thread.join(timeout=5)

    def _listen(self) -> None:
        try:
            with self.recorder.datastore.get_connection() as conn:
                conn.execute(SQL("LISTEN {0}").format(Identifier(self.recorder.channel_name)))
                self._wake()  # anything committed before LISTEN is read by the first pass
                while not self._halt.is_set():
                    for _ in conn.notifies(timeout=0.25, stop_after=1):
                        self._wake()
        except BaseException as e:
            self.error = e
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._woken.set)
