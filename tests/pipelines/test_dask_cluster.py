"""census and sweep on a Dask cluster started as users start one: `dask scheduler` and `dask worker`
as separate processes on 127.0.0.1, the commands run through the real CLI in their own process.

Nothing here opens a client that the command could pick up as a default: the command must find
the cluster by its address alone (the bug these tests were written for: "No clients found").
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from support import ROOT, dask_environment, kill_a_busy_worker

distributed = pytest.importorskip("distributed", reason="the real-cluster tests need dask[distributed]")

TIMING = ("seconds", "started", "worker")  # what two runs of one census may differ in
SWEEP_VARIES = ("seconds", "batch", "part", "recording")
TINY = ["--vocab", "32", "--context", "16", "--width", "16", "--layers", "1", "--heads", "2"]


@pytest.fixture(scope="module")
def cluster(dask_cluster):
    """The `dask scheduler` + `dask worker` processes of tests/conftest.py (one home for every real-cluster test)."""
    return dask_cluster


def blackholes(*argv, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blackholes", *map(str, argv)], cwd=ROOT, env=dask_environment(),
                          capture_output=True, text=True, timeout=timeout)


def write_model(path: Path, seed: int, rows: int = 500) -> str:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 16)).astype(np.float32)
    x[10:40] = x[5]  # one hole of 31 rows
    x[100:103] = x[7]
    save_file({"model.embed_tokens.weight": x}, str(path))
    return str(path)


def slow_model(path: Path, seed: int) -> str:
    """A model slow enough to be killed mid-scan (~0.3 s): 1.2M short rows, thousands of small holes."""
    x = np.random.default_rng(seed).integers(0, 20_000, size=(1_200_000, 2)).astype(np.float32)
    save_file({"embeddings": x}, str(path))
    return str(path)


def rows_of(path: Path, varies=TIMING) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in varies} for r in rows]


def by_source(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["source"], r["request"]))


def test_census_on_the_cluster_gives_the_local_pool_rows(cluster, tmp_path):
    address, probe = cluster
    sources = [write_model(tmp_path / f"m{i}.safetensors", seed=i) for i in range(3)] + [str(tmp_path / "absent")]
    local = blackholes("census", *sources, "--out", tmp_path / "local", "--workers", "2", "--quiet")
    dask = blackholes("census", *sources, "--out", tmp_path / "dask", "--scheduler", address, "--quiet")
    assert local.returncode == 0 and dask.returncode == 0, dask.stderr
    assert "Traceback" not in dask.stderr
    assert by_source(rows_of(tmp_path / "dask" / "census.jsonl")) == by_source(rows_of(tmp_path / "local" / "census.jsonl"))
    workers = {f"{host}:{pid}" for host, pid in
               ((socket.gethostname(), pid) for pid in probe.run(os.getpid).values())}
    dask_rows = [json.loads(line) for line in (tmp_path / "dask" / "census.jsonl").read_text().splitlines()]
    assert {r["worker"] for r in dask_rows} <= workers  # the rows were scanned on the cluster's workers
    assert sorted(os.listdir(tmp_path / "dask" / "models")) == sorted(os.listdir(tmp_path / "local" / "models"))


def test_sweep_on_the_cluster_gives_the_local_runs(cluster, tmp_path):
    address, _ = cluster
    from train_helpers import write_corpus

    corpus = write_corpus(tmp_path / "corpus.txt")
    # one batch of four runs: one worker imports torch, the other stays idle
    grid = ["--corpus", corpus, "--sigma", "0,1e-2", "--seeds", "0-1", "--steps", "4", *TINY, "--quiet"]
    local = blackholes("sweep", "--out", tmp_path / "local", "--workers", "1", *grid)
    dask = blackholes("sweep", "--out", tmp_path / "dask", "--scheduler", address, *grid)
    assert local.returncode == 0 and dask.returncode == 0, dask.stderr
    key = lambda r: r["run"]  # noqa: E731
    assert sorted(rows_of(tmp_path / "dask" / "runs.jsonl", SWEEP_VARIES), key=key) == \
        sorted(rows_of(tmp_path / "local" / "runs.jsonl", SWEEP_VARIES), key=key)


def test_census_finds_the_cluster_by_environment_or_by_a_client_that_is_not_the_default(cluster, tmp_path):
    address, probe = cluster
    sources = [write_model(tmp_path / f"m{i}.safetensors", seed=i) for i in range(2)]
    env = subprocess.run([sys.executable, "-m", "blackholes", "census", *sources, "--out", tmp_path / "env", "--quiet"],
                         cwd=ROOT, env={**dask_environment(), "DASK_SCHEDULER_ADDRESS": address}, capture_output=True,
                         text=True, timeout=120)
    assert env.returncode == 0, env.stderr
    from blackholes.pipelines.census import census

    with pytest.raises(ValueError):
        distributed.default_client()  # the probe is no default client: census must use the one it is given
    given = census(sources, out=tmp_path / "given", scheduler=probe, summary=False)
    assert given.failed == 0 and probe.status == "running"  # a client passed in is left open
    assert by_source(rows_of(tmp_path / "env" / "census.jsonl")) == by_source(rows_of(tmp_path / "given" / "census.jsonl"))
    workers = {f"{socket.gethostname()}:{pid}" for pid in probe.run(os.getpid).values()}
    assert {r["worker"] for r in given.rows} <= workers


@pytest.mark.parametrize("command", ["census", "sweep"])
def test_an_address_where_nothing_listens_is_one_line_at_once(tmp_path, command):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, and nothing listens once the socket is closed
    model = write_model(tmp_path / "m.safetensors", seed=0)
    argv = [model] if command == "census" else ["--steps", "2"]
    t0 = time.perf_counter()
    r = blackholes(command, *argv, "--out", tmp_path / "out", "--scheduler", f"tcp://127.0.0.1:{port}", timeout=60)
    seconds = time.perf_counter() - t0
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in r.stderr
    assert seconds < 10  # no connection timeout to sit out, no hang at exit
    assert not (tmp_path / "out").exists()


def test_an_address_that_listens_but_never_answers_is_one_line_within_the_timeout(tmp_path):
    model = write_model(tmp_path / "m.safetensors", seed=0)
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = "tcp://127.0.0.1:%d" % silent.getsockname()[1]
        t0 = time.perf_counter()
        r = blackholes("census", model, "--out", tmp_path / "out", "--scheduler", address, "--connect-timeout", "2",
                       timeout=60)
        seconds = time.perf_counter() - t0
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert f"cannot reach the Dask scheduler at {address} (no Dask scheduler answered within 2 s)" in r.stderr
    assert seconds < 2 + 8  # the timeout, and no hang at exit
    assert not (tmp_path / "out").exists()


def test_a_worker_killed_mid_model_costs_one_retry(cluster, tmp_path):
    address, probe = cluster
    # two models on two one-thread workers: each worker holds one model, nothing waits behind it
    sources = [slow_model(tmp_path / f"slow{i}.safetensors", seed=i) for i in range(2)]
    thread, killed = kill_a_busy_worker(probe, "census-", within=60)
    try:
        r = blackholes("census", *sources, "--out", tmp_path / "out", "--scheduler", address)
    finally:
        thread.join()
    assert killed and r.returncode == 0, r.stderr
    assert r.stderr.count("the scheduler ran it again") == 1  # one death, one retry
    rows = [json.loads(line) for line in (tmp_path / "out" / "census.jsonl").read_text().splitlines()]
    assert sorted(row["source"] for row in rows) == sorted(sources) and all(row["error"] is None for row in rows)
    for row in rows:  # every row still right
        words = np.frombuffer(Path(row["path"]).read_bytes()[-1_200_000 * 8:], np.uint64)
        assert row["unique_vectors"] == len(np.unique(words))
    probe.wait_for_workers(2, timeout=60)  # the nanny restarted the killed one
