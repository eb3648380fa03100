"""``history``: a series of checkpoints followed exactly, from folders, a cache, a Hub server and recordings.

Each series is built here: training runs of this toolkit written out as checkpoint-N folders,
a fake Hugging Face cache with several revisions, a local Range-capable server posing as the
Hub. Per-checkpoint figures are checked against a numpy brute force (``tobytes`` of every row),
and events, last motion and lineages against ``dynamics --census`` of the same steps.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from blackholes.analysis.lifecycle import census, census_of_recording
from blackholes.errors import BlackholesError
from blackholes.io.safetensors import open_tensor, save_safetensors
from blackholes.pipelines.history import history
from blackholes.sources.series import expand_series

EMB = "model.embed_tokens.weight"


# ---------------------------------------------------------------------------- helpers


def brute(rows: np.ndarray) -> dict:
    """Per-checkpoint figures by ``tobytes`` of every row: the notebook's definition."""
    groups: dict[bytes, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.tobytes(), []).append(i)
    holes = sorted((g for g in groups.values() if len(g) >= 2), key=lambda g: (-len(g), g[0]))
    sizes = [len(g) for g in holes]
    return {"distinct": len(groups), "holes": len(holes), "tokens_in_holes": sum(sizes),
            "largest": max(sizes, default=0), "hole_sizes": sizes}


def write_checkpoint(folder: Path, array: np.ndarray, dtype: str | None = None, tie: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(folder / "model.safetensors", {EMB: (array, dtype) if dtype else array})
    (folder / "config.json").write_text(json.dumps({"tie_word_embeddings": tie}))


def events_of(doc_events: list[dict], kinds=("fission", "merger")) -> list[tuple]:
    return [(e["kind"], e["step"], e["before"], e["after"]) for e in doc_events if e["kind"] in kinds]


def census_events(c) -> list[tuple]:
    return [(e.kind, e.step, e.before, e.after) for e in c.events]


def figures(entry: dict) -> dict:
    return {k: entry[k] for k in ("distinct", "holes", "tokens_in_holes", "largest", "hole_sizes")}


# ---------------------------------------------------------------------------- this toolkit's own training runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run whose bf16 rounding makes several holes at step 0 that split and merge."""
    from blackholes.training.loop import TrainConfig, train

    root = tmp_path_factory.mktemp("hist")
    rng = np.random.default_rng(0)
    corpus = root / "corpus.txt"
    corpus.write_bytes(np.arange(3, 15, dtype=np.uint8)[rng.integers(0, 12, 3000)].tobytes())
    cfg = TrainConfig(corpus=str(corpus), sigma=1e-4, vocab=128, width=4, steps=30, context=16, layers=1,
                      heads=2, compile=False)
    path = root / "run.safetensors"
    result = train(cfg, path, progress=False)
    emb = np.asarray(open_tensor(path, "embeddings"))
    steps = np.asarray(result.recorded_steps)
    return root, path, emb, steps


def write_series(root: Path, emb: np.ndarray, steps, idx) -> Path:
    folder = root / f"series-{len(idx)}-{idx[1]}"
    if not folder.exists():
        for i in idx:
            write_checkpoint(folder / f"checkpoint-{int(steps[i])}", emb[i], "BF16")
    return folder


def test_checkpoint_folders_of_a_training_run_equal_brute_force_and_the_census(trained, tmp_path):
    root, path, emb, steps = trained
    idx = list(range(len(steps)))
    folder = write_series(root, emb, steps, idx)
    r = history([folder], out=tmp_path / "h")
    assert [c["step"] for c in r.checkpoints] == steps.tolist()
    for c, i in zip(r.checkpoints, idx):
        assert figures(c) == brute(emb[i])
        assert c["bytes_read"] == emb[i].nbytes and c["label"] == f"checkpoint-{steps[i]}"
    c = census_of_recording(path)  # what `dynamics --census` computes
    assert c.events and events_of(r.events) == census_events(c)
    section = r.matrices["default"]
    assert section["last_motion"] == c.last_motion
    assert section["lineages"] == [h.to_json() for h in c.lineages]
    assert section["frozen_from"] == {"matrix": c.frozen_from["matrix"], "dead_set": c.frozen_from["holes"]}
    assert section["partition_changes"] == c.partition_changes
    doc = json.loads((tmp_path / "h" / "history.json").read_text())
    assert doc["checkpoints"] == r.checkpoints and len(doc["events"]) == len(r.events)
    for name in ("history.md", "history.html", "plots/holes.png", "plots/swimlane.png", "plots/last_motion.png"):
        assert (tmp_path / "h" / name).stat().st_size > 0


def test_every_third_step_equals_the_census_of_those_steps(trained, tmp_path):
    root, _, emb, steps = trained
    idx = list(range(0, len(steps), 3))
    r = history([write_series(root, emb, steps, idx)], out=tmp_path / "h")
    c = census(emb[idx], "BF16", steps[idx])
    assert events_of(r.events) == census_events(c)
    assert r.matrices["default"]["last_motion"] == c.last_motion
    # dead-set events: exactly the set differences of the tokens in holes
    dead = [set(np.flatnonzero(np.bincount(g, minlength=len(g))[g] >= 2)) for g in c.group_ids]
    expect = []
    for k in range(1, len(idx)):
        for kind, toks in (("joined", dead[k] - dead[k - 1]), ("left", dead[k - 1] - dead[k])):
            if toks:
                expect.append((kind, int(steps[idx[k]]), sorted(toks)))
    assert [(e["kind"], e["step"], e["tokens"]) for e in r.events if e["kind"] in ("joined", "left")] == expect


def test_a_recording_is_a_series_of_its_steps_and_a_rerun_resumes(trained, tmp_path):
    _, path, emb, steps = trained
    r = history([path], out=tmp_path / "h")
    assert [c["label"] for c in r.checkpoints][:2] == ["step 0", f"step {steps[1]}"]
    assert events_of(r.events) == census_events(census_of_recording(path)) and r.read == len(steps)
    again = history([path], out=tmp_path / "h")
    assert again.read == 0 and again.bytes_read == 0
    assert again.checkpoints == r.checkpoints and again.events == r.events and again.matrices == r.matrices
    lines = (tmp_path / "h" / "history.jsonl").read_text().splitlines()
    assert len(lines) == len(steps)


def test_the_public_name_here_and_in_a_pool_and_to_pandas(trained, tmp_path):
    import blackholes

    root, _, emb, steps = trained
    folder = write_series(root, emb, steps, [0, 5, 10, 15])
    here = blackholes.history([folder], workers=1)
    pooled = blackholes.history([folder], workers=2)
    assert isinstance(here, blackholes.HistoryResult) and here.out is None
    assert (here.checkpoints, here.events, here.matrices) == (pooled.checkpoints, pooled.events, pooled.matrices)
    try:
        import pandas as pd
    except ImportError:
        with pytest.raises(BlackholesError, match="pip install pandas"):
            here.to_pandas()
        return
    df = here.to_pandas()
    assert isinstance(df, pd.DataFrame) and df["holes"].tolist() == [c["holes"] for c in here.checkpoints]


# ---------------------------------------------------------------------------- made series


def planted(V=64, D=8, seed=0) -> list[np.ndarray]:
    """Four float32 matrices: a hole of 10 splits, one part absorbs two tokens, one row moves."""
    m = np.random.default_rng(seed).standard_normal((V, D)).astype(np.float32)
    m[:10] = 0
    out = [m.copy()]
    m[5:10] = 1
    out.append(m.copy())
    m[20:22] = 1
    out.append(m.copy())
    m[30] += 1
    out.append(m.copy())
    return out


def test_a_vocabulary_resize_is_a_resize_not_a_fission(tmp_path):
    mats = planted()
    grown = np.concatenate([mats[3], np.full((8, 8), 7, np.float32)])  # 8 new rows, all one point
    steps = [0, 100, 200, 300, 400, 500]
    for s, m in zip(steps, [*mats, grown, grown]):
        write_checkpoint(tmp_path / "run" / f"step{s}", m)
    r = history([tmp_path / "run"], out=tmp_path / "h")
    resize = [e for e in r.events if e["kind"] == "resize"]
    assert [(e["step"], e["vocab_before"], e["vocab_after"], e["added"]) for e in resize] == \
        [(400, 64, 72, list(range(64, 72)))]
    assert [e["kind"] for e in r.events if e["step"] == 400] == ["resize", "joined"]
    assert events_of(r.events) == [("fission", 100, list(range(10)), [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]),
                                   ("merger", 200, [[5, 6, 7, 8, 9], [20], [21]], [5, 6, 7, 8, 9, 20, 21])]
    by_step = {c["step"]: c for c in r.checkpoints}
    # canonical ids: one per membership, the same across the resize while the members are the same
    assert by_step[300]["hole_ids"] == by_step[400]["hole_ids"][1:] == by_step[200]["hole_ids"]
    assert by_step[400]["hole_sizes"] == [8, 7, 5] and by_step[400]["hole_ids"][0] not in by_step[300]["hole_ids"]
    for c, m in zip(r.checkpoints, [*mats, grown, grown]):
        assert figures(c) == brute(m)
    motion = r.matrices["default"]["last_motion"]
    assert len(motion) == 72 and motion[64:] == [400] * 8 and motion[30] == 300 and motion[5] == 100


def test_a_missing_checkpoint_is_an_error_row_and_the_rest_goes_on(tmp_path):
    mats = planted()
    for i, m in enumerate(mats):
        write_checkpoint(tmp_path / f"c{i}", m)
    sources = [tmp_path / "c0", tmp_path / "c1", tmp_path / "gone", tmp_path / "c2", tmp_path / "c3"]
    r = history(sources, out=tmp_path / "h")
    errors = [c for c in r.checkpoints if c.get("error")]
    assert len(errors) == 1 and errors[0]["label"].endswith("gone") and "no such file" in errors[0]["error"]
    assert [figures(c) for c in r.good()] == [brute(m) for m in mats]
    assert [e["kind"] for e in r.events if e["kind"] in ("fission", "merger")] == ["fission", "merger"]
    assert "could not be read" in (tmp_path / "h" / "history.md").read_text()


def test_halo_with_near(tmp_path):
    mats = planted()
    mats[1][40] = mats[1][0]
    mats[1][40, 0] = np.nextafter(np.float32(0), np.float32(1))  # 1 ULP from the hole at 0
    for i, m in enumerate(mats[:2]):
        write_checkpoint(tmp_path / "run" / f"checkpoint-{i}", m)
    r = history([tmp_path / "run"], near=2)
    assert [c["halo"] for c in r.checkpoints] == [0, 1]


# ---------------------------------------------------------------------------- a fake Hugging Face cache


def make_cache(hub: Path, repo_id: str, revisions: dict[str, np.ndarray]) -> None:
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for i, (name, m) in enumerate(revisions.items()):
        commit = f"{i:040x}"
        write_checkpoint(repo / "snapshots" / commit, m)
        (repo / "refs" / name).write_text(commit)


def test_several_revisions_of_one_cached_model(tmp_path, monkeypatch):
    mats = planted()
    make_cache(tmp_path / "hub", "org/tiny", {f"step{1000 * i}": m for i, m in enumerate(mats)})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for spec in ("step0-step3000:1000", "step*", "step0,step1000,step2000,step3000"):
        r = history(["org/tiny"], revisions=spec)
        assert [c["step"] for c in r.checkpoints] == [0, 1000, 2000, 3000]
        assert [figures(c) for c in r.checkpoints] == [brute(m) for m in mats]
        assert [e["step"] for e in r.events if e["kind"] in ("fission", "merger")] == [1000, 2000]
    with pytest.raises(BlackholesError, match="matches none"):
        history(["org/tiny"], revisions="ckpt*")


# ---------------------------------------------------------------------------- hf:// through a local server


def _server():
    name = "bh_test_http_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "sources" / "http_server.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_hub_revisions_by_range_read_only_the_matrix(tmp_path, monkeypatch):
    from blackholes.io.safetensors import read_header
    from blackholes.sources import remote

    hs = _server()
    mats = planted()
    folders = {}
    for i, m in enumerate(mats):
        f = tmp_path / "revs" / f"step{i * 10}"
        f.mkdir(parents=True)
        pad = np.zeros(1 << 18, np.float32)  # 1 MiB of other weights, never fetched
        save_safetensors(f / "model.safetensors", {"model.layers.0.w": pad, EMB: m})
        (f / "config.json").write_text(json.dumps({"tie_word_embeddings": True}))
        folders[f.name] = f
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with hs.serve(folders["step0"], hub="org/name", revisions=folders) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url.rstrip("/"))
        r = history(["hf://org/name"], revisions="step*", out=tmp_path / "h")
        files = server.file_bytes_sent()
    assert [c["label"] for c in r.checkpoints] == ["step0", "step10", "step20", "step30"]
    assert [figures(c) for c in r.checkpoints] == [brute(m) for m in mats]
    assert [c["revision"] for c in r.checkpoints] == [server.shas[f"step{i * 10}"] for i in range(4)]
    config = len(json.dumps({"tie_word_embeddings": True}))
    expected = []
    for f in folders.values():
        header = read_header(f / "model.safetensors")
        start = min(t.start for t in header.tensors.values())
        size = (f / "model.safetensors").stat().st_size
        expected.append(max(min(remote.PROBE_BYTES, size), start) + header.tensors[EMB].nbytes + config)
    assert [c["bytes_read"] for c in r.checkpoints] == expected
    assert files == sum(expected) == r.bytes_read
    assert events_of(r.events) == events_of(history([f for f in folders.values()]).events)


# ---------------------------------------------------------------------------- series expansion


def test_series_names(tmp_path):
    for name in ("checkpoint-200", "checkpoint-30", "step-5", "other"):
        (tmp_path / "run" / name).mkdir(parents=True)
    assert [c.label for c in expand_series([tmp_path / "run"])] == ["step-5", "checkpoint-30", "checkpoint-200"]
    assert [c.step for c in expand_series(["b", "a"])] == [0, 1]
    assert [c.label for c in expand_series(["o/n"], revisions="step0-step25:10")] == ["step0", "step10", "step20",
                                                                                      "step25"]
    with pytest.raises(BlackholesError, match="one model"):
        expand_series(["a", "b"], revisions="main")


def test_a_dask_cluster_gives_the_same_history(tmp_path):
    distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed")
    mats = planted()
    for i, m in enumerate(mats):
        write_checkpoint(tmp_path / "run" / f"checkpoint-{i}", m)
    here = history([tmp_path / "run"], workers=1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, worker_dashboard_address=None) as lc:
        with distributed.Client(lc) as client:
            there = history([tmp_path / "run"], scheduler=client, out=tmp_path / "h")
            assert client.status == "running"  # a Client passed in is left open
    assert (there.checkpoints, there.events, there.matrices) == (here.checkpoints, here.events, here.matrices)


def test_a_rerun_reads_again_only_what_it_cannot_trust(tmp_path):
    mats = planted()
    for i, m in enumerate(mats):
        write_checkpoint(tmp_path / "run" / f"checkpoint-{i}", m)
    first = history([tmp_path / "run"], out=tmp_path / "h", workers=1)
    store = tmp_path / "h" / "history.jsonl"
    rows = [json.loads(line) for line in store.read_text().splitlines()]
    name = hashlib.sha256(rows[0]["key"].encode()).hexdigest()[:24]
    (tmp_path / "h" / "digests" / f"{name}.npy").unlink()  # the first checkpoint's digests gone
    hostile = {**rows[1], "holes": [[0, 10**6]]}  # a row naming a token outside the vocabulary
    with open(store, "a") as f:
        f.write(json.dumps(hostile) + "\n" + '{"key": "torn')  # and a torn last line
    again = history([tmp_path / "run"], out=tmp_path / "h", workers=1)
    assert again.read == 2 and (again.checkpoints, again.events) == (first.checkpoints, first.events)
    assert history([tmp_path / "run"], out=tmp_path / "h", workers=1).read == 0


def test_the_command_on_a_real_cluster_gives_the_local_history(dask_cluster, tmp_path):
    """`blackholes history run --scheduler tcp://...` against `dask scheduler` + `dask worker` processes
    (tests/conftest.py), through the real CLI in its own process: history.json is the local run's."""
    import subprocess

    from support import ROOT, dask_environment

    address, probe = dask_cluster
    for i, m in enumerate(planted()):
        write_checkpoint(tmp_path / "run" / f"checkpoint-{i}", m)

    def command(*argv):
        return subprocess.run([sys.executable, "-m", "blackholes", "history", str(tmp_path / "run"), *argv,
                               "--quiet"], cwd=ROOT, env=dask_environment(), capture_output=True, text=True,
                              timeout=180)

    local = command("--out", str(tmp_path / "local"), "--workers", "1")
    dask = command("--out", str(tmp_path / "h"), "--scheduler", address)
    assert local.returncode == 0 and dask.returncode == 0 and "Traceback" not in dask.stderr, dask.stderr
    here, there = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("local", "h"))
    assert without_timing(there) == without_timing(here)
    done = probe.run_on_scheduler(finished_keys)  # the checkpoints were read on the cluster's workers
    for i in range(len(planted())):
        assert any(f"run-checkpoint-{i}-" in key for key in done), (i, done)


def without_timing(doc):
    """A history document without what two runs of one series may differ in (when and where it ran)."""
    if isinstance(doc, dict):
        return {k: without_timing(v) for k, v in doc.items() if k not in ("seconds", "worker", "started", "out")}
    if isinstance(doc, list):
        return [without_timing(v) for v in doc]
    return doc


def finished_keys(dask_scheduler=None) -> list[str]:
    """On the scheduler: the keys of every task that finished in memory (the runner's keys name the checkpoint)."""
    return sorted({str(t[0]) for t in dask_scheduler.transition_log if t[2] == "memory"})
