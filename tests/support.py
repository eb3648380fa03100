"""Shared test helpers (plain functions and paths; the fixtures are in conftest.py): planted matrices,
the CLI as a real process, the one-line-error assertion every bad input must pass, the shared data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the repository
SHARED = ROOT.parent / "shared"  # the project's shared data, beside the repository (may be absent)
GATSBY = SHARED / "data" / "gatsby_clean.txt"


def planted(n=300, d=40, dtype=np.float32, seed=0, sizes=(7, 5, 5, 2)):
    """A random [n, d] matrix in which groups of ``sizes`` rows share one vector, bit for bit."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(dtype)
    picks = rng.permutation(n)[: sum(sizes)]
    start = 0
    for size in sizes:
        x[picks[start : start + size]] = x[picks[start]]
        start += size
    return x


def run_blackholes(*argv, env=None, timeout=120, **kw) -> subprocess.CompletedProcess:
    """``python -m blackholes ARGV...`` as a real process (text output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "blackholes", *map(str, argv)],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout, **kw,
    )


def assert_one_line_error(status: int, err: str, words: str | None = None) -> str:
    """A refusal: exit 2, exactly one line on stderr starting ``blackholes: error:``, no traceback."""
    assert status == 2, (status, err)
    assert err.startswith("blackholes: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    if words is not None:
        assert words in err, err
    return err


# ---------------------------------------------------------------------------- a Dask cluster as users start one

DASK = [sys.executable, "-m", "dask"]  # the `dask` command of this very environment


def dask_environment() -> dict:
    """The environment the cluster's processes and the commands under test run in: this checkout's
    package, and no $DASK_SCHEDULER_ADDRESS (the commands must be given the address)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return env


def stop_process_group(proc: subprocess.Popen) -> None:
    """End a process and every child it started (a worker's nannies and their workers)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def kill_a_busy_worker(client, key_prefix: str, *, within: float = 60.0):
    """Start a thread that SIGKILLs the first worker seen running a task whose key starts ``key_prefix``,
    a moment into it; returns ``(thread, killed)``, ``killed`` the list of the worker addresses it killed."""
    import threading
    import time

    pids = client.run(os.getpid)
    killed: list[str] = []

    def killer():
        deadline = time.time() + within
        while time.time() < deadline and not killed:
            busy = [w for w, keys in client.processing().items() if any(key_prefix in str(k) for k in keys)]
            if busy and busy[0] in pids:
                time.sleep(0.15)  # well inside the task
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.01)

    thread = threading.Thread(target=killer)
    thread.start()
    return thread, killed
