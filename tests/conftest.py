"""Shared test fixtures (the plain helpers they use are in support.py, importable by name)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from support import DASK, ROOT, assert_one_line_error, dask_environment, stop_process_group


@pytest.fixture
def cli_error(capsys):
    """``cli_error(argv, words=None)``: run the CLI in-process and assert a one-line refusal; returns stderr."""
    from blackholes.cli import main

    def check(argv, words=None) -> str:
        status = main([str(a) for a in argv])
        return assert_one_line_error(status, capsys.readouterr().err, words)

    return check


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A Dask cluster as users start one: ``dask scheduler`` on a free port of 127.0.0.1 and
    ``dask worker ADDRESS --nworkers 2 --nthreads 1``, separate processes; yields (address, a
    client for looking only, never the default one). Always torn down."""
    distributed = pytest.importorskip("distributed", reason="the real-cluster tests need dask[distributed]")
    folder = tmp_path_factory.mktemp("cluster")
    file = folder / "scheduler.json"
    procs = []
    probe = None
    try:
        procs.append(subprocess.Popen(
            [*DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(file)],
            cwd=ROOT, env=dask_environment(), stdout=subprocess.DEVNULL, stderr=open(folder / "scheduler.log", "wb"),
            start_new_session=True))
        deadline = time.time() + 30
        while time.time() < deadline and not (file.is_file() and file.read_text().strip().endswith("}")):
            time.sleep(0.05)
        address = json.loads(file.read_text())["address"]
        procs.append(subprocess.Popen(
            [*DASK, "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
            cwd=ROOT, env=dask_environment(), stdout=subprocess.DEVNULL, stderr=open(folder / "worker.log", "wb"),
            start_new_session=True))
        probe = distributed.Client(address, timeout=30, set_as_default=False)
        probe.wait_for_workers(2, timeout=60)
        yield address, probe
    finally:
        if probe is not None:
            probe.close()
        for proc in reversed(procs):
            stop_process_group(proc)
