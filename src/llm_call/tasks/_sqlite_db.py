"""A SQLite database with one writer thread doing group commit, and per-thread readers.

:meth:`GroupCommitDB.write` queues an operation (a function of the connection) and returns when
the transaction holding it committed. The writer thread takes every operation waiting at that
moment and applies them in one ``BEGIN IMMEDIATE`` ... ``COMMIT`` (``synchronous=FULL``, WAL), so
a thousand concurrent writes cost one fsync. If an operation raises, the batch is rolled back
and its operations are replayed one per transaction, so only the faulty one fails. If the lock
cannot be had (another process held it past the busy timeout), nothing ran: the whole batch
fails at once, instead of each write waiting out the timeout again in turn.
:meth:`GroupCommitDB.read` runs a query inline on the calling thread's own read connection.

If the writer thread itself dies (a ``ROLLBACK`` that raises, any ``BaseException`` out of a
batch), the database is **broken**: the writes it held and every write queued or made later fail
at once with :class:`~llm_call.errors.TaskStoreError` (never wait forever), and :attr:`broken`
says why, so ``/health`` answers 503 and a worker exits for its supervisor to restart it. Its
connection is closed as it dies, so a transaction it was inside does not keep the file's write
lock from the other processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError, LLMCallError, TaskStoreError

__all__ = ["GroupCommitDB"]

T = TypeVar("T")
_log = logging.getLogger("llm_call.tasks")
_BUSY_TIMEOUT_S = 30.0

_Op = Callable[[sqlite3.Connection], Any]
_Item = tuple[_Op, "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class GroupCommitDB:
    """See the module docstring. ``init(conn)`` creates the schema (returns a reason if unusable)."""

    def __init__(
        self, path: Path, init: Callable[[sqlite3.Connection], str | None], *, batch_max: int = 5000
    ) -> None:
        self.path = path
        self._init = init
        self._batch_max = batch_max
        self._queue: queue.SimpleQueue[list[_Item] | None] = queue.SimpleQueue()
        # writes of one loop iteration, handed to the writer together (one put, one wake-up)
        self._outbox: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        self._writer: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._sentinel_sent = False
        self.broken: TaskStoreError | None = None  # set when the writer thread died
        self._in_hand: list[_Item] = []  # the batch the writer is applying
        self.commits = 0  # write transactions committed (group commit makes it << writes)

    async def open(self) -> None:
        """Open (creating the file and schema); ConfigError if the file cannot be used."""
        if self._writer is not None:
            return
        await asyncio.to_thread(self._open_sync)

    def _unusable(self, why: str) -> ConfigError:
        return ConfigError(
            f"task store {self.path} cannot be used: {why}",
            hint="fix the file or its permissions, or choose another path with --tasks, LLM_CALL_TASKS "
            "or settings.tasks.store",
        )

    def _open_sync(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unusable(f"cannot create directory {self.path.parent}: {exc.strerror or exc}") from None
        if self.path.exists() and not self.path.is_file():
            raise self._unusable("it is not a regular file")
        if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
            raise self._unusable("the file is not readable and writable by this user")
        if not self.path.exists() and not os.access(self.path.parent, os.W_OK | os.X_OK):
            raise self._unusable(f"directory {self.path.parent} is not writable")
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S
            )
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise self._unusable(f"cannot switch to WAL journal mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            why = self._init(conn)
            if why is not None:
                conn.execute("ROLLBACK")
                raise self._unusable(why)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise self._unusable(f"{type(exc).__name__}: {exc}") from None
        except ConfigError:
            if conn is not None:
                conn.close()
            raise
        self._wconn = conn
        self._writer = threading.Thread(
            target=self._write_loop, name=f"llm_call-tasks-writer:{self.path.name}", daemon=True
        )
        self._writer.start()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        writer = self._writer
        if writer is not None:
            try:
                self._hand_over(asyncio.get_running_loop())
            except RuntimeError:
                pass
            self._queue.put(None)
            self._sentinel_sent = True
            await asyncio.to_thread(writer.join)
        if self._wconn is not None:
            self._wconn.close()
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            try:
                conn.close()
            except sqlite3.ProgrammingError:  # created in another thread that is still using it
                _log.debug("read connection of another thread left to the garbage collector")

    def _error(self, exc: BaseException) -> TaskStoreError:
        return TaskStoreError(f"task store {self.path}: {type(exc).__name__}: {exc}")

    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        return await self.enqueue(op)

    def enqueue(self, op: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``op`` now; the future gets its result once its transaction committed."""
        if self.broken is not None:
            raise self.broken
        if self._closed or self._writer is None:
            raise TaskStoreError(f"task store {self.path} is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        outbox = self._outbox.get(loop)
        if outbox is None:
            outbox = self._outbox[loop] = []
            loop.call_soon(self._hand_over, loop)
        outbox.append((op, fut, loop))
        return fut

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """Pass this loop's queued writes to the writer thread (in order, in one put)."""
        items = self._outbox.pop(loop, None)
        if not items:
            return
        writer = self._writer
        if writer is None or self._sentinel_sent or self.broken is not None:  # the writer is gone
            err = self.broken or TaskStoreError(f"task store {self.path} is not open")
            for _, fut, _ in items:
                if not fut.done():
                    fut.set_exception(err)
            return
        self._queue.put(items)

    def _write_loop(self) -> None:
        try:
            self._apply_batches()
        except BaseException as exc:  # the thread dies: fail everything now and from now on
            self.broken = TaskStoreError(
                f"task store {self.path}: its writer stopped ({type(exc).__name__}: {exc}); "
                "no write can be made until the process restarts"
            )
            _log.critical("%s", self.broken, exc_info=True)
            self._release_lock()
            self._deliver([(fut, loop, None, self.broken) for _, fut, loop in self._in_hand])
            # stay to fail what was handed over meanwhile (racing with ``broken`` being set),
            # until close() sends the sentinel
            while (nxt := self._queue.get()) is not None:
                self._deliver([(fut, loop, None, self.broken) for _, fut, loop in nxt])

    def _release_lock(self) -> None:
        """Close the dead writer's connection: it may have died inside ``BEGIN IMMEDIATE`` (or
        after a ``ROLLBACK`` that raised), and an open transaction keeps the file's write lock,
        so every other process's writes would fail after the busy timeout until this one exits.
        Closing rolls back whatever it held."""
        conn = self._wconn
        if conn is None:
            return
        try:
            conn.close()
        except sqlite3.Error as exc:  # dying anyway; the lock goes when the process does
            _log.error("task store %s: closing the dead writer's connection failed: %s", self.path, exc)

    def _apply_batches(self) -> None:
        assert self._wconn is not None
        conn = self._wconn
        stop = False
        while not stop:
            items = self._queue.get()
            if items is None:
                break
            batch = list(items)
            while len(batch) < self._batch_max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.extend(nxt)
            self._in_hand = batch
            self._run_batch(conn, batch)
            self._in_hand = []

    def _run_batch(
        self,
        conn: sqlite3.Connection,
        batch: list[_Item],
    ) -> None:
        results: list[Any] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except Exception as exc:  # no lock (busy past the timeout): nothing ran, all fail alike
            busy = self._error(exc)
            _log.error("task store write failed: %s", exc)
            self._deliver([(fut, loop, None, busy) for _, fut, loop in batch])
            return
        try:
            for op, _, _ in batch:
                results.append(op(conn))
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # one op failed or the commit did: retry the ops one by one
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if len(batch) > 1:
                _log.warning("task store batch of %d failed (%s); retrying one by one", len(batch), exc)
                for item in batch:
                    self._run_batch(conn, [item])
                return
            err: BaseException = exc if isinstance(exc, LLMCallError) else self._error(exc)
            if not isinstance(exc, LLMCallError):
                _log.error("task store write failed: %s", exc)
            self._deliver([(batch[0][1], batch[0][2], None, err)])
            return
        self._deliver([(fut, loop, res, None) for (_, fut, loop), res in zip(batch, results, strict=True)])

    @staticmethod
    def _deliver(items: Iterable[tuple[asyncio.Future[Any], asyncio.AbstractEventLoop, Any, BaseException | None]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = defaultdict(list)
        for fut, loop, res, err in items:
            by_loop[loop].append((fut, res, err))

        def settle(group: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
            for fut, res, err in group:
                if fut.done():
                    continue
                if err is not None:
                    fut.set_exception(err)
                else:
                    fut.set_result(res)

        for loop, group in by_loop.items():
            try:
                loop.call_soon_threadsafe(settle, group)
            except RuntimeError:  # the caller's loop is closed: the write is durable anyway
                _log.debug("task store: result for a closed event loop dropped")

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed or self._writer is None:
                raise TaskStoreError(f"task store {self.path} is not open")
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S)
                conn.execute("PRAGMA query_only=1")
            except sqlite3.Error as exc:
                raise self._error(exc) from None
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader()
        try:
            return op(conn)
        except sqlite3.Error as exc:
            raise self._error(exc) from None

