"""A small pool of processes for the heavy parsing of outside input: mails and photos.

Parsing runs on bytes from anyone. In the process that answers logins it would hold the GIL (a
thread does not help), so a slow mail would delay every login of `mfa run all`. Here each job
runs in one of a few worker processes and has a deadline: the worker interrupts itself when the
deadline passes (SIGALRM), and the caller stops waiting a little later in any case, so a job
always ends in a result or a `JobTimeout`, never a hang.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from ..common.logs import get_logger

log = get_logger("recovery.workers")

T = TypeVar("T")

MAX_WORKERS = 2
JOB_TIMEOUT = 10.0  # a 15 MB mail with a 10 MB photo parses in well under a second
# The caller waits this much longer than the worker's own deadline before giving the worker up.
CALLER_GRACE = 2.0
WORKER_NICENESS = 10


class JobTimeout(Exception):
    """A job did not finish within its deadline (or its worker died); the input is given up."""


class _Deadline(BaseException):
    """Raised in the worker by SIGALRM; a BaseException so that no `except Exception` of a parser swallows it."""


def _on_alarm(_signum, _frame) -> None:
    raise _Deadline()


def _init_worker() -> None:
    # Parsing yields the CPU to the process that answers logins when both want it.
    os.nice(WORKER_NICENESS)
    # Ctrl-C in a terminal reaches the whole process group; the service stops its pool itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _on_alarm)


def _run_with_deadline(timeout: float, fn: Callable[..., T], args: tuple) -> T:
    """In the worker: `fn(*args)`, interrupted after `timeout` seconds (regex and Python code check signals)."""
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return fn(*args)
    except _Deadline:
        raise JobTimeout(f"{getattr(fn, '__name__', fn)} took longer than {timeout}s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _ready() -> bool:
    return True


class ParsePool:
    """At most `max_workers` jobs at once, each within `timeout` seconds; started and stopped by the app."""

    def __init__(self, max_workers: int = MAX_WORKERS, timeout: float = JOB_TIMEOUT,
                 grace: float = CALLER_GRACE) -> None:
        self.max_workers = max_workers
        self.timeout = timeout
        self.grace = grace
        self._executor: ProcessPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None

    def _new_executor(self) -> ProcessPoolExecutor:
        # spawn: a fork of a process with an event loop, sockets and threads would inherit them all.
        return ProcessPoolExecutor(self.max_workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker)

    async def start(self) -> None:
        """Start the workers and wait until they can take jobs (the imports are paid here, not by the first mail)."""
        self._executor = self._new_executor()
        self._slots = asyncio.Semaphore(self.max_workers)
        await asyncio.gather(*(self.run(_ready, timeout=30) for _ in range(self.max_workers)))
        log.info("parse_pool_started", workers=self.max_workers, timeout=self.timeout)

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """`fn(*args)` in a worker; JobTimeout when it (waiting for a worker included) takes too long.

        `fn` and its arguments must be picklable (module-level functions, bytes, str, dataclasses).
        Exceptions `fn` raises are raised here.
        """
        if self._executor is None or self._slots is None:
            raise RuntimeError("the parse pool is not started")
        limit = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        executor: ProcessPoolExecutor | None = None
        try:
            async with asyncio.timeout(limit + self.grace):
                async with self._slots:
                    executor = self._executor
                    return await loop.run_in_executor(executor, _run_with_deadline, limit, fn, args)
        except TimeoutError:
            # Waiting for a slot took the time, or the worker ignored its own deadline (stuck in C
            # code): in the second case the pool is given up for a new one.
            log.warning("parse_job_abandoned", job=getattr(fn, "__name__", str(fn)), timeout=limit)
            self._replace(executor)
            raise JobTimeout(f"no result within {limit + self.grace}s") from None
        except BrokenProcessPool:
            log.warning("parse_pool_broken", job=getattr(fn, "__name__", str(fn)))
            self._replace(executor)
            raise JobTimeout("the worker process died") from None

    def _replace(self, broken: ProcessPoolExecutor | None) -> None:
        if broken is None or broken is not self._executor:
            return
        broken.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_executor()

    async def stop(self, grace: float = 3.0) -> None:
        """Cancel queued jobs and let the workers exit."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True), grace)
        except TimeoutError:
            log.warning("parse_pool_stop_timeout")
