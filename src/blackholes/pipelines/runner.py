"""One runner for every many-task job: census, sweep, verify, history.

A :class:`Task` is a plain module-level function, its arguments and an estimate of the
memory it needs. :func:`run_tasks` runs every task once and hands each :class:`Outcome`
back to ``handle(task, outcome)`` in this process, in submission order; ``handle`` may
return follow-up tasks, which are run too. Where the tasks run:

* ``workers=1``: here, one after another;
* otherwise a local process pool of ``workers`` processes (default: the cores) that admits
  tasks by their memory estimate (a task alone always runs), and runs a task again, alone,
  when its worker process died (killed, out of memory): ``retries`` times, then its outcome
  is an error;
* a Dask cluster: ``scheduler`` (an address such as ``tcp://HOST:8786``, or
  ``$DASK_SCHEDULER_ADDRESS``) or ``client`` (an open ``distributed.Client``, left open).
  A task whose worker dies is run again by the scheduler (its
  ``distributed.scheduler.allowed-failures``); ``Outcome.attempts`` counts the runs.

Ctrl-C, SIGTERM and SIGHUP stop the run: the outcomes already finished are handed back,
the rest is cancelled, and :class:`~blackholes.errors.Stopped` carries the signal's name
up to the CLI, which exits 128 + its number.

>>> seen = []
>>> run_tasks([Task("a", abs, (-2,)), Task("b", abs, (3,))], lambda t, o: seen.append((t.key, o.value)),
...           workers=1, progress=None)
>>> seen
[('a', 2), ('b', 3)]
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from blackholes.errors import BlackholesError, Stopped

ERROR_CHARS = 300
MEMORY_SHARE = 0.8  # of the RAM available at start, for the tasks running at once in the local pool
CONNECT_TIMEOUT = 10.0  # seconds to reach a Dask scheduler


@dataclass(frozen=True)
class Task:
    """One unit of work: ``fn(*args, **kwargs)``, picklable (``fn`` defined at module level).

    ``work``: how many progress units the task counts for; ``reports``: ``fn`` takes
    ``progress=callable(n)`` and calls it with the units done as it goes (local runs only).
    """

    key: str  # unique and stable across runs: ordering, resume, progress label
    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    memory: int = 0  # estimated peak bytes (the local pool admits by it)
    label: str | None = None  # what the progress bar shows (default: key)
    work: int = 1
    reports: bool = False


@dataclass
class Outcome:
    """What a task gave back: ``value`` (what fn returned) or ``error`` (one line), after ``attempts`` runs."""

    value: object | None = None
    error: str | None = None
    attempts: int = 1


def one_line(e: BaseException) -> str:
    """A one-line reason: a BlackholesError's own words, else the exception's type and first line.

    >>> one_line(ValueError("bad\\nworse")), one_line(BlackholesError("no such file"))
    ('ValueError: bad', 'no such file')
    """
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if not isinstance(e, BlackholesError):
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


# ---------------------------------------------------------------------------- the API


def run_tasks(tasks, handle, *, workers: int | None = None, scheduler=None, client=None,
              memory_budget: int | None = None, retries: int = 1, progress: str | None = "tasks",
              log=None) -> None:
    """Run every task once; call ``handle(task, outcome)`` here, in submission order, as results
    come back. ``handle`` may return more tasks (follow-ups), which are run too.

    ``scheduler``: a Dask address, ``"local"`` (the local pool, whatever the environment says),
    or None (``$DASK_SCHEDULER_ADDRESS`` when set and ``workers`` is not); ``client``: an open
    ``distributed.Client``. ``progress``: the progress bar's unit (None: no bar). ``log`` hears
    one line when a task is run again. Ctrl-C / SIGTERM / SIGHUP: stops, hands back what had
    finished, raises :class:`~blackholes.errors.Stopped`.

    >>> out = []
    >>> run_tasks([Task("x", divmod, (7, 0))], lambda t, o: out.append(o.error), workers=1, progress=None)
    >>> out
    ['ZeroDivisionError: integer division or modulo by zero']
    """
    tasks = list(tasks)
    order = _Order(handle)
    with _stop_on_signals(), cluster(scheduler, client=client, workers=workers) as dask:
        bar = _Bar(progress, tasks)
        try:
            if dask is not None:
                _run_dask(tasks, order, dask, bar, log)
            elif (workers or os.cpu_count() or 1) <= 1:
                _run_here(tasks, order, bar)
            else:
                budget = memory_budget if memory_budget is not None else _default_budget()
                _Pool(workers or os.cpu_count() or 1, budget, retries, bar, log).run(tasks, order)
        except KeyboardInterrupt as e:
            order.flush()
            raise Stopped(getattr(e, "signal_name", None)) from None
        finally:
            bar.close()


def _default_budget() -> int:
    from blackholes.training.limits import available_memory

    have = available_memory()
    return int(have * MEMORY_SHARE) if have is not None else 1 << 62


class _Order:
    """Hands outcomes to ``handle`` in submission order; numbers the follow-ups it returns."""

    def __init__(self, handle):
        self.handle = handle
        self.next = 0  # number of the next task to hand back
        self.count = 0  # tasks numbered so far
        self.number: dict[str, int] = {}
        self.ready: dict[int, tuple] = {}

    def add(self, tasks) -> list:
        for t in tasks:
            if t.key in self.number:
                raise BlackholesError(f"two tasks have the key {t.key!r}")
            self.number[t.key] = self.count
            self.count += 1
        return list(tasks)

    def done(self, task: Task, outcome: Outcome) -> list:
        """Record a finished task; hand back every one now in order; return their follow-ups."""
        self.ready[self.number[task.key]] = (task, outcome)
        more = []
        while self.next in self.ready:
            t, o = self.ready.pop(self.next)
            self.next += 1
            more += self.add(self.handle(t, o) or [])
        return more

    def flush(self) -> None:
        """Stopping: hand back what finished behind a task that did not (follow-ups dropped)."""
        for n in sorted(self.ready):
            self.handle(*self.ready.pop(n))


# ---------------------------------------------------------------------------- signals


class _stop_on_signals:
    """SIGTERM and SIGHUP raise :class:`Stopped` like Ctrl-C does (main thread only), naming the signal."""

    def __enter__(self):
        self.previous = {}

        def stop(signum, frame):
            raise Stopped(signal.Signals(signum).name)

        for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)):
            if sig is None:
                continue
            try:
                self.previous[sig] = signal.signal(sig, stop)
            except ValueError:  # not the main thread: the process's own handling stays
                break
        return self

    def __exit__(self, *exc):
        for sig, old in self.previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


# ---------------------------------------------------------------------------- progress


class _Bar:
    """A tqdm bar over the tasks' ``work`` (nothing when ``unit`` is None)."""

    def __init__(self, unit: str | None, tasks: list[Task]):
        self.tqdm = None
        self.reported: dict[str, int] = {}
        total = sum(t.work for t in tasks)
        if unit and total:
            from tqdm.auto import tqdm

            tqdm.monitor_interval = 0  # no monitor thread: the pool may then fork
            self.tqdm = tqdm(total=total, unit=unit, unit_scale=True, dynamic_ncols=True, mininterval=0.5,
                             file=sys.stderr)

    def more(self, tasks: list[Task]) -> None:
        if self.tqdm is not None and tasks:
            self.tqdm.total += sum(t.work for t in tasks)
            self.tqdm.refresh()

    def report(self, key: str, n: int) -> None:
        self.reported[key] = self.reported.get(key, 0) + n
        if self.tqdm is not None:
            self.tqdm.update(n)

    def finished(self, task: Task) -> None:
        left = task.work - self.reported.pop(task.key, 0)
        if self.tqdm is not None and left > 0:
            self.tqdm.update(left)

    def retry(self, task: Task) -> None:
        """A task starts again: what it reported counts again."""
        n = self.reported.pop(task.key, 0)
        if self.tqdm is not None and n:
            self.tqdm.update(-n)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()


# ---------------------------------------------------------------------------- what runs on a worker


@dataclass
class _Failed:
    """fn raised: its one-line reason (exceptions do not all survive pickling)."""

    error: str


_QUEUE = None  # a pool process's progress queue (set by _pool_init)


def _call(fn, args: tuple, kwargs: dict, key: str | None = None):
    """Run fn where the task landed; progress (when ``key``) goes to the pool's queue."""
    try:
        if key is not None:
            kwargs = {**kwargs, "progress": (lambda n: _QUEUE.put((key, n))) if _QUEUE is not None else None}
        return fn(*args, **kwargs)
    except Exception as e:  # a failing task is an outcome, never the end of the run
        return _Failed(one_line(e))


def _outcome(value, attempts: int) -> Outcome:
    if isinstance(value, _Failed):
        return Outcome(None, value.error, attempts)
    return Outcome(value, None, attempts)


def _run_here(tasks: list[Task], order: _Order, bar: _Bar) -> None:
    """One after another in this process."""
    queue = deque(order.add(tasks))
    while queue:
        t = queue.popleft()
        report = (lambda n, key=t.key: bar.report(key, n)) if t.reports else None
        try:
            kwargs = {**t.kwargs, "progress": report} if t.reports else t.kwargs
            value = t.fn(*t.args, **kwargs)
        except Exception as e:
            value = _Failed(one_line(e))
        bar.finished(t)
        more = order.done(t, _outcome(value, 1))
        bar.more(more)
        queue.extend(more)


# ---------------------------------------------------------------------------- the local pool


def pool_context():
    """fork when it is safe (Linux, a single-threaded parent without torch: torch's OpenMP
    threads do not survive a fork): workers start in milliseconds; otherwise forkserver."""
    import multiprocessing as mp
    import threading

    if sys.platform == "linux" and "torch" not in sys.modules and threading.active_count() == 1:
        return mp.get_context("fork")
    return mp.get_context("forkserver" if sys.platform != "win32" else "spawn")


def _pool_init(queue, environ: dict, cwd: str) -> None:
    """A pool process starts where the parent is now: its environment (HF_HUB_CACHE, ...) and
    working directory (a forkserver's children would inherit the server's). Ctrl-C is the
    parent's to handle; SIGTERM (the parent stopping the pool) ends the process."""
    global _QUEUE
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    _QUEUE = queue


def admit(memory: int, in_flight: list[int], budget: int) -> bool:
    """Whether a task needing ``memory`` bytes may start beside those in flight: always when alone.

    >>> admit(6, [5], budget=10), admit(6, [], budget=10), admit(20, [], budget=10)
    (False, True, True)
    """
    return not in_flight or sum(in_flight) + memory <= budget


class _Pool:
    """Tasks on a process pool, admitted by memory; a worker process that dies has its task(s)
    run again, a suspect alone, so a second death points at the task itself."""

    def __init__(self, workers: int, budget: int, retries: int, bar: _Bar, log):
        self.workers, self.budget, self.retries, self.bar, self.log = max(1, workers), budget, retries, bar, log
        self.crashes: dict[str, int] = {}  # deaths while a task ran alone
        self.attempts: dict[str, int] = {}
        self.suspects: set[str] = set()

    def run(self, tasks: list[Task], order: _Order) -> None:
        from concurrent.futures import FIRST_COMPLETED, wait

        ctx = pool_context()
        self.progress = ctx.SimpleQueue()
        queue, running, pool = deque(order.add(tasks)), {}, None
        try:
            while queue or running:
                pool = pool or self._start(ctx, len(queue))
                self._fill(pool, queue, running)
                done, _ = wait(list(running), timeout=0.25, return_when=FIRST_COMPLETED)
                self._drain()
                if self._collect(done, running, queue, order):
                    wait(list(running))  # a broken pool fails every task in it: gather them all
                    self._collect(list(running), running, queue, order, broken_with=True)
                    pool.shutdown(wait=True)
                    pool = None
        except BaseException:
            if pool is not None:
                stop_pool(pool)
            raise
        if pool is not None:
            pool.shutdown(wait=True)

    def _start(self, ctx, tasks: int):
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(min(self.workers, max(1, tasks)), mp_context=ctx, initializer=_pool_init,
                                   initargs=(self.progress, dict(os.environ), os.getcwd()))

    def _drain(self) -> None:
        while not self.progress.empty():
            self.bar.report(*self.progress.get())

    def _fill(self, pool, queue: deque, running: dict) -> None:
        """Submit queued tasks while the memory budget allows, up to one more per worker than the
        workers (a worker that finishes starts its next task at once); a suspect runs alone."""
        while queue and len(running) < 2 * self.workers:
            if any(t.key in self.suspects for t in running.values()):
                return
            in_flight = [t.memory for t in running.values()]
            pick = next((i for i, t in enumerate(queue) if (not running or t.key not in self.suspects)
                         and admit(t.memory, in_flight, self.budget)), None)
            if pick is None:
                return
            task = queue[pick]
            del queue[pick]
            self.attempts[task.key] = self.attempts.get(task.key, 0) + 1
            key = task.key if task.reports else None
            running[pool.submit(_call, task.fn, task.args, task.kwargs, key)] = task

    def _collect(self, done, running: dict, queue: deque, order: _Order, broken_with: bool = False) -> bool:
        """Hand finished outcomes on; run again (or fail) tasks whose worker died. True if the pool broke."""
        from concurrent.futures.process import BrokenProcessPool

        broken = []
        alone = len(running) == 1 and not broken_with
        for fut in [f for f in running if f in done]:  # in submission order: a set has none
            task = running.pop(fut)
            try:
                value = fut.result()
            except BrokenProcessPool:
                broken.append(task)
                continue
            self._finish(task, _outcome(value, self.attempts.get(task.key, 1)), queue, order)
        for task in broken:
            if alone:  # it was the only one running: its own death, counted
                self.crashes[task.key] = self.crashes.get(task.key, 0) + 1
            if self.crashes.get(task.key, 0) > self.retries:
                reason = (f"the worker process died {self.crashes[task.key]} times while running it "
                          f"(out of memory, or killed)")
                self._finish(task, Outcome(None, reason, self.attempts.get(task.key, 1)), queue, order)
            else:
                self.suspects.add(task.key)
                self.bar.retry(task)
                queue.appendleft(task)
                if self.log is not None:
                    self.log(f"{task.label or task.key}: its worker process died; running it again")
        return bool(broken)

    def _finish(self, task: Task, outcome: Outcome, queue: deque, order: _Order) -> None:
        self.bar.finished(task)
        more = order.done(task, outcome)
        self.bar.more(more)
        queue.extend(more)


def stop_pool(pool) -> None:
    """Stop a pool now: queued tasks cancelled, running worker processes terminated."""
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------- Dask


class cluster:
    """``with cluster(scheduler, client=..., workers=...) as client:`` the ``distributed.Client``
    to run on (None: the local pool). A client opened here is closed on the way out; one passed
    in stays open. An address where nothing listens is one line after ``timeout`` seconds.

    >>> with cluster("local") as c:
    ...     c is None
    True
    """

    def __init__(self, scheduler=None, *, client=None, workers: int | None = None, timeout: float = CONNECT_TIMEOUT):
        self.scheduler, self.client, self.workers, self.timeout = scheduler, client, workers, timeout
        self.owned = None

    def __enter__(self):
        target = self.client if self.client is not None else _dask_target(self.scheduler, self.workers)
        if target is None:
            return None
        if self.workers is not None:
            raise BlackholesError("--workers sizes the local pool; on a Dask cluster its workers run the tasks")
        if not isinstance(target, str):
            return target
        self.owned = connect(target, self.timeout)
        return self.owned

    def __exit__(self, *exc):
        if self.owned is not None:
            self.owned.close()


def _dask_target(scheduler, workers):
    """A Client or an address to run on, or None for the local pool."""
    if isinstance(scheduler, str) and scheduler == "local":
        return None
    if scheduler is not None:
        return scheduler
    if workers is not None:  # an explicit local pool size means the local pool
        return None
    return os.environ.get("DASK_SCHEDULER_ADDRESS") or _open_client()


def _open_client():
    """A ``distributed.Client`` already open in this process (a notebook's), if Dask is loaded at all."""
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:  # no client open
        return None


def connect(address: str, timeout: float = CONNECT_TIMEOUT):
    """A ``distributed.Client`` for ``address``, or one clear line when Dask is not installed or
    nothing answers there within ``timeout`` seconds."""
    if not re.match(r"^[a-z]+://", address):
        address = f"tcp://{address}"
    refused = _nothing_listens(address, timeout)  # before importing Dask: seconds saved on a typo
    if refused:
        raise BlackholesError(f"cannot reach the Dask scheduler at {address} ({refused}); start one with "
                              f"`dask scheduler` and workers with `dask worker {address}`")
    try:
        from distributed import Client
    except ImportError:
        raise BlackholesError('--scheduler needs Dask: pip install "blackholes[cluster]"') from None
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as e:
        raise BlackholesError(
            f"cannot reach the Dask scheduler at {address} ({one_line(e)}); start one with `dask scheduler` "
            f"and workers with `dask worker {address}`"
        ) from None


def _nothing_listens(address: str, timeout: float) -> str | None:
    """Why a ``tcp://HOST:PORT`` address is no Dask scheduler, or None (it answers like one, or the
    address is of another kind). A scheduler speaks first on a new connection (its handshake), so
    a refused port, a silent server (an HTTP server waits for a request; Dask's own client would
    wait for ever) or a closed connection is told here, within ``timeout``, before any Dask client
    is started whose comm threads would otherwise hold the process."""
    import socket

    m = re.fullmatch(r"tcp://\[?([^\]/]+?)\]?:(\d+)/?", address)
    if m is None:
        return None
    try:
        with socket.create_connection((m[1], int(m[2])), timeout=timeout) as sock:
            sock.settimeout(timeout)
            if not sock.recv(1):
                return "it closed the connection: not a Dask scheduler"
            return None
    except socket.timeout:
        return f"no Dask scheduler answered within {timeout:g} s"
    except OSError as e:
        return e.strerror or str(e)


def dask_failure(e: BaseException) -> str:
    """The error of a task the cluster could not finish."""
    if type(e).__name__ == "KilledWorker":
        return f"every Dask worker that ran it died (KilledWorker, after the scheduler's allowed failures): {e}"
    return f"the Dask cluster could not run it: {one_line(e)}"


def _run_dask(tasks: list[Task], order: _Order, client, bar: _Bar, log) -> None:
    """The same tasks on a Dask cluster; the client is passed everywhere (never a default client)."""
    from distributed import as_completed

    run_id = hashlib.sha256(f"{time.time_ns()}:{os.getpid()}".encode()).hexdigest()[:8]
    futures: dict = {}
    numbers = itertools.count()

    def submit(t: Task):
        key = f"{re.sub(r'[^A-Za-z0-9._-]+', '-', t.key)[:120]}-{run_id}-{next(numbers)}"
        fut = client.submit(_call, t.fn, t.args, t.kwargs, key=key, pure=False)
        futures[fut] = t
        return fut

    stream = as_completed([submit(t) for t in order.add(tasks)], loop=client.loop)
    try:
        for fut in stream:
            task = futures.pop(fut)
            try:
                outcome = _outcome(fut.result(), _dask_attempts(client, fut.key))
            except Exception as e:  # KilledWorker after the allowed worker deaths, a lost future, ...
                outcome = Outcome(None, dask_failure(e), _dask_attempts(client, fut.key))
            if outcome.attempts > 1 and log is not None:
                log(f"{task.label or task.key}: the Dask worker holding it died; the scheduler ran it again")
            bar.finished(task)
            more = order.done(task, outcome)
            bar.more(more)
            for t in more:
                stream.add(submit(t))
            fut.release()
    finally:
        if futures:  # stopped: nothing left running on the cluster for us
            client.cancel(list(futures))


def _dask_attempts(client, key) -> int:
    """How many times the scheduler gave the task to a worker (its transitions to processing, from
    the scheduler's own record): more than once when a worker died holding it, running or queued
    there, which Dask counts as that worker's failure too. 1 when the record cannot be read."""
    try:
        story = client.sync(client.scheduler.get_story, keys_or_stimuli=[key])
    except Exception:  # an older scheduler, a closed connection: the count is a detail
        return 1
    return max(1, sum(1 for step in story if len(step) > 2 and step[2] == "processing"))
