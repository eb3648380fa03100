"""census: many models at once — sources, rows equal to scan, resume, faults, local pool and Dask."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import support
import pytest
from safetensors.numpy import load_file, save_file

import blackholes
from blackholes.errors import BlackholesError
from blackholes.pipelines import census as C

TIMING = ("seconds", "started", "worker")  # what differs between two runs of the same census
NO_DASK = 'Dask is an optional extra: pip install "blackholes[cluster]"'


# ---------------------------------------------------------------------------- generated models


def planted(seed: int, n: int = 200, d: int = 16, sizes=(9, 4, 2)) -> np.ndarray:
    """A random [n, d] float32 matrix with groups of ``sizes`` bit-identical rows."""
    return support.planted(n=n, d=d, seed=seed, sizes=sizes)


def write_model(folder: Path, *, tied: bool, seed: int, sharded: bool = False, embed=None, **kw) -> dict:
    """A Hugging Face-style model folder (config.json + safetensors, optionally sharded)."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = {"model.embed_tokens.weight": planted(seed, **kw) if embed is None else embed,
               "model.norm.weight": np.ones(16, np.float32)}
    if not tied:
        weights["lm_head.weight"] = planted(seed + 100, sizes=(3, 3), **kw)
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny", "tie_word_embeddings": tied}))
    if sharded:
        names = {"model-00001-of-00002.safetensors": ["model.embed_tokens.weight", "model.norm.weight"],
                 "model-00002-of-00002.safetensors": ["lm_head.weight"]}
        for shard, keys in names.items():
            save_file({k: weights[k] for k in keys}, str(folder / shard))
        weight_map = {k: shard for shard, keys in names.items() for k in keys}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    else:
        save_file(weights, str(folder / "model.safetensors"))
    return weights


def cache_model(hub: Path, repo_id: str, revision: str = "c0ffee", ref: bool = True, **kw) -> Path:
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    write_model(repo / "snapshots" / revision, **kw)
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return repo / "snapshots" / revision


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fake HF cache: tied, untied, sharded, one broken model, one without an embedding."""
    hub = tmp_path / "hub"
    cache_model(hub, "org/tied", tied=True, seed=1)
    cache_model(hub, "org/untied", tied=False, seed=2)
    cache_model(hub, "org/sharded", tied=False, seed=3, sharded=True)
    broken = cache_model(hub, "org/broken", tied=True, seed=4)
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    noemb = hub / "models--org--noemb" / "snapshots" / "beef"
    noemb.mkdir(parents=True)
    save_file({"foo.bias": np.zeros(4, np.float32)}, str(noemb / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    return hub


def slow_model(path: Path, seed: int) -> str:
    """A model slow enough to be killed mid-scan (~0.3 s): 1.2M short rows, thousands of small holes."""
    x = np.random.default_rng(seed).integers(0, 20_000, size=(1_200_000, 2)).astype(np.float32)
    save_file({"embeddings": x}, str(path))
    return str(path)


def oracle_sizes(array: np.ndarray) -> list[int]:
    """Hole sizes by brute force: a dict of each row's bytes, as the original notebook did."""
    seen: dict[bytes, int] = {}
    for row in array:
        seen[row.tobytes()] = seen.get(row.tobytes(), 0) + 1
    return sorted((n for n in seen.values() if n > 1), reverse=True)


def by_key(rows):
    return {(r["source"], r["request"]): r for r in rows}


def strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING}


def jsonl(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "census.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------- sources


def test_expand_sources_from_file_and_hf_cache(hub, tmp_path):
    cache_model(hub, "org/noref", revision="aaaa", ref=False, tied=True, seed=9)
    (hub / "datasets--org--data" / "snapshots" / "d1").mkdir(parents=True)
    listing = tmp_path / "list.txt"
    listing.write_text("# my models\n\n./a.safetensors   # a comment\nhttps://h/x.safetensors#frag\norg/tied\n")
    names = C.expand_sources(["org/tied", "b"], from_file=listing, hf_cache=True)
    assert names == ["org/tied", "b", "./a.safetensors", "https://h/x.safetensors#frag", "org/broken", "org/noemb@beef",
                     "org/noref@aaaa", "org/sharded", "org/untied"]
    with pytest.raises(BlackholesError, match="cannot read the source list"):
        C.expand_sources(from_file=tmp_path / "absent.txt")


def test_no_sources_is_one_line(tmp_path):
    with pytest.raises(BlackholesError, match="no models to survey"):
        C.census([], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- rows


def test_rows_equal_individual_scans(hub, tmp_path):
    r = C.census(["org/missing", str(tmp_path / "absent.safetensors")], hf_cache=True, out=tmp_path / "out",
                 workers=2, summary=False)
    rows = by_key(r.rows)
    assert len(jsonl(tmp_path / "out")) == len(r.rows) == 9 and r.scanned == 9 and r.skipped == 0
    assert set(rows) == {("org/tied", "default"), ("org/untied", "default"), ("org/untied", "input"),
                         ("org/sharded", "default"), ("org/sharded", "input"), ("org/broken", "default"),
                         ("org/noemb@beef", "default"), ("org/missing", "default"),
                         (str(tmp_path / "absent.safetensors"), "default")}
    assert r.failed == 4
    assert "not a safetensors file" in rows["org/broken", "default"]["error"]
    assert "no output embedding" in rows["org/noemb@beef", "default"]["error"]
    assert "not in the local Hugging Face cache" in rows["org/missing", "default"]["error"]
    assert rows["org/tied", "default"]["tied"] is True and rows["org/untied", "default"]["tied"] is False
    for (source, request), row in rows.items():
        if row["error"] is not None:
            assert row["holes"] is None and row["scan_json"] is None and "\n" not in row["error"]
            continue
        result = blackholes.scan(source, matrix=None if request == "default" else request)
        arrays = load_file(str(result.path))
        assert row["key"] == result.key and row["shape"] == list(result.shape) and row["dtype"] == "F32"
        assert row["hole_sizes"] == [g.size for g in result.groups] == oracle_sizes(arrays[result.key])
        assert row["unique_vectors"] == result.unique_vectors and row["black_hole_tokens"] == result.black_hole_tokens
        assert row["revision"] == Path(result.path).parent.name and row["bytes_read"] == arrays[result.key].nbytes
        assert json.loads((tmp_path / "out" / row["scan_json"]).read_text()) == result.to_json()
    assert rows["org/untied", "input"]["key"] == "model.embed_tokens.weight"
    assert rows["org/sharded", "default"]["path"].endswith("model-00002-of-00002.safetensors")


def test_analysis_columns_from_a_hand_made_scan_json():
    doc = {
        "groups": [
            {"id": 1, "size": 3, "token_ids": [1, 2, 3], "categories": ["special", "normal", "normal"],
             "scripts": {"Latin": 2, "Han": 1}},
            {"id": 2, "size": 2, "token_ids": [7, 8],
             "tokens": [{"category": "padding", "script": "none"}, {"category": "normal", "script": "Latin"}]},
        ],
        "clusters": {"k": 8, "grid": "BF16", "clusters": [
            {"id": 1, "hole_ids": [1, 2], "singletons": [11, 12, 13]},
            {"id": 2, "holes": [], "singletons": [20, 21]},  # no exact hole: no halo
        ]},
        "indicators": {"main": "norm", "candidates": [{"id": 5}, {"id": 6}]},
    }
    cols = C.analysis_columns(doc)
    assert cols == {"halo_size": 3, "near_clusters": 2, "candidates": 2,
                    "categories": {"normal": 3, "padding": 1, "special": 1},
                    "scripts": {"Han": 1, "Latin": 3, "none": 1}}
    assert C.analysis_columns({"groups": []}) == dict.fromkeys(cols)
    assert C.analysis_columns({"candidates": {"ids": [1, 2, 3]}, "halo_size": 7})["candidates"] == 3


def test_scan_options_key_the_resume(tmp_path):
    store = C.CensusStore(tmp_path / "out")
    store.open()
    plain = C.Task("m.safetensors")
    store.append({**C.error_row(plain, "x"), "error": None})
    book = C._Book(store, redo=False, result=C.CensusResult(rows=[]))
    with_opts = C.Task("m.safetensors", options=(("indicators", True),))
    assert book.still_to_do([plain, with_opts]) == [with_opts]
    if "indicators" in __import__("inspect").signature(blackholes.scan).parameters:
        assert C.scan_options(indicators=True) == {"indicators": True}
    else:  # not wired into scan yet: refused before any work, not a TypeError per model
        with pytest.raises(BlackholesError, match="--indicators is not supported"):
            C.scan_options(indicators=True)


def test_census_with_near_and_indicators(tmp_path):
    if not {"near", "indicators"} <= set(__import__("inspect").signature(blackholes.scan).parameters):
        pytest.skip("scan() has no near/indicators in this version")
    x = planted(3)
    holes = [i for i in range(len(x)) if (x == x[i]).all(axis=1).sum() > 1]
    x[5] = x[holes[0]]
    x[5, 0] = np.nextafter(x[5, 0], np.float32(np.inf))  # one ULP from a hole: its halo
    save_file({"embeddings": x}, str(tmp_path / "m.safetensors"))
    source, out = [str(tmp_path / "m.safetensors")], tmp_path / "out"
    (row,) = C.census(source, out=out, near=8, indicators=True, workers=1, summary=False).rows
    assert row["error"] is None and row["options"] == {"indicators": True, "near": 8}
    assert row["halo_size"] == 1 and row["near_clusters"] >= 1 and row["candidates"] >= 1
    doc = json.loads((out / row["scan_json"]).read_text())
    assert {"clusters", "indicators"} <= set(doc)
    plain = C.census(source, out=out, workers=1, summary=False)  # other options: not the same row
    assert plain.scanned == 1 and plain.rows[0]["halo_size"] is None


def test_options_are_forwarded_to_scan(tmp_path, monkeypatch):
    import blackholes.analysis.groups as groups

    write_model(tmp_path / "m", tied=True, seed=5)
    real, seen = groups.scan, []

    def scan(m, **options):
        seen.append(options)
        return real(m)

    monkeypatch.setattr(groups, "scan", scan)
    outcome = C.scan_one(C.Task(str(tmp_path / "m"), "input", (("indicators", True), ("near", 4))))
    assert seen == [{"threads": None, "indicators": True, "near": 4}]
    assert outcome.row["options"] == {"indicators": True, "near": 4}  # threads is how, not what: not an option
    assert outcome.row["error"] is None and outcome.row["tied"] is True


# ---------------------------------------------------------------------------- resume, interruption, output folder


def test_resume_skips_finished_models_and_redoes_changed_ones(tmp_path):
    for name, seed in (("a", 1), ("b", 2)):
        write_model(tmp_path / name, tied=name == "a", seed=seed)
    sources, out = [str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "out"
    first = C.census(sources, out=out, workers=2, summary=False)
    assert first.scanned == 3 and len(jsonl(out)) == 3
    again = C.census(sources, out=out, workers=2, summary=False)
    assert again.scanned == 0 and again.skipped == 3 and len(jsonl(out)) == 3
    assert [strip(r) for r in again.rows] == [strip(r) for r in first.rows]
    os.utime(tmp_path / "b" / "model.safetensors", ns=(1, 1))  # b changed: both its matrices again
    changed = C.census(sources, out=out, workers=2, summary=False)
    assert changed.scanned == 2 and changed.skipped == 1
    assert {r["source"] for r in jsonl(out)[3:]} == {str(tmp_path / "b")}
    redo = C.census(sources, out=out, workers=2, summary=False, redo=True)
    assert redo.scanned == 3 and len(jsonl(out)) == 8
    masks = C.census(sources, out=out, workers=2, summary=False, masks=True)  # rows without their masks: again
    assert masks.scanned == 3 and all((out / r["mask"]).is_file() for r in masks.rows)
    assert C.census(sources, out=out, workers=2, summary=False, masks=True).skipped == 3


def test_interrupted_census_keeps_rows_and_resumes(tmp_path):
    write_model(tmp_path / "big", tied=False, seed=1, n=400)
    write_model(tmp_path / "small", tied=False, seed=2)
    sources, out = [str(tmp_path / "big"), str(tmp_path / "small")], tmp_path / "out"
    calls = []

    def log(line):  # Ctrl-C right after the first model finished
        calls.append(line)
        if line.startswith("[1/"):
            raise KeyboardInterrupt

    r = C.census(sources, out=out, workers=1, summary=False, log=log)
    assert r.interrupted and r.scanned == 1 and len(jsonl(out)) == 1
    assert not (out / "census.md").exists()
    first = jsonl(out)[0]
    assert (first["source"], first["request"]) == (str(tmp_path / "big"), "default")  # the largest runs first
    with open(out / "census.jsonl", "a") as f:  # and a crash in the middle of the next append
        f.write('{"source": "half a ro')
    r = C.census(sources, out=out, workers=2, summary=False)
    assert r.skipped == 1 and r.scanned == 3 and not r.interrupted
    keys = [(row["source"], row["request"]) for row in jsonl(out)]
    assert len(keys) == len(set(keys)) == 4


CLI = """
import sys
from blackholes.cli.main import main  # the one stop line of every command: cli/main.py:stop_line
sys.exit(main(["census", *sys.argv[1:]]))
"""


def test_ctrl_c_stops_cleanly_keeping_every_finished_row(tmp_path):
    import subprocess
    import sys

    sources = [slow_model(tmp_path / f"slow{i}.safetensors", seed=i) for i in range(5)]
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", CLI, *sources, "--out", str(out), "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 30
    while time.time() < deadline and not ((out / "census.jsonl").is_file() and (out / "census.jsonl").read_text()):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted:" in err and "Traceback" not in err
    rows = jsonl(out)
    assert 1 <= len(rows) < 5 and len({r["source"] for r in rows}) == len(rows)
    assert not (out / "census.md").exists()


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_an_out_that_is_not_a_census_is_refused_untouched(tmp_path):
    write_model(tmp_path / "m", tied=True, seed=1)
    source = [str(tmp_path / "m")]
    cases = {"notes": ("notes.txt", "my notes"), "jsonl": ("census.jsonl", '{"name": "other"}\n'),
             "models": ("models/x.txt", "x")}
    for case, (name, text) in cases.items():
        out = tmp_path / case
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
        before = tree(out)
        with pytest.raises(BlackholesError, match="not part of a census|is not a census") as e:
            C.census(source, out=out, workers=1)
        assert "\n" not in str(e.value) and tree(out) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(BlackholesError, match="must be a folder"):
        C.census(source, out=tmp_path / "file")
    ok = C.census(source, out=tmp_path / "fine", workers=1, summary=False)  # a census folder is fine, twice
    (tmp_path / "fine" / "models" / ".x.json.1234.tmp").write_text("")  # a killed atomic write's leftover
    assert C.census(source, out=tmp_path / "fine", workers=1, summary=False).skipped == ok.scanned == 1


# ---------------------------------------------------------------------------- the local pool


def test_memory_admission_runs_models_one_at_a_time(tmp_path):
    sources = []
    for i in range(3):
        write_model(tmp_path / f"m{i}", tied=True, seed=i, n=300)
        sources.append(str(tmp_path / f"m{i}"))
    r = C.census(sources, out=None, workers=2, memory_budget=1, matrix="input")
    spans = sorted((datetime.fromisoformat(row["started"]).timestamp(), row["seconds"]) for row in r.rows)
    for (start, seconds), (next_start, _) in zip(spans, spans[1:]):
        assert next_start >= start + seconds - 0.002  # never two at once
    assert C.estimate_bytes(C.Task(sources[0], "input")) == 300 * 16 * 4 + 64 * 300
    assert C.estimate_bytes(C.Task("https://h/m.safetensors")) == 0 == C.estimate_bytes(C.Task("/absent"))


def test_a_worker_that_keeps_dying_becomes_an_error_row():
    from blackholes.pipelines.runner import Task, run_tasks

    rows, log = [], []

    def handle(t, outcome):
        rows.append((outcome.error, outcome.attempts))
        return []

    # a task whose process dies every time it runs (as a model too large for memory would)
    run_tasks([Task("x", os._exit, (1,))], handle, workers=2, retries=1, progress=None, log=log.append)
    assert len(log) == 1 and "running it again" in log[0]  # the first death: run again, alone
    assert len(rows) == 1 and "worker process died 2 times" in rows[0][0] and rows[0][1] == 2


def test_local_pool_survives_a_killed_worker(tmp_path):
    import multiprocessing

    sources = []
    for i in range(3):
        sources.append(slow_model(tmp_path / f"slow{i}.safetensors", seed=i))
    killed = []

    def killer():
        deadline = time.time() + 20
        while time.time() < deadline and not killed:
            children = multiprocessing.active_children()
            if len(children) >= 2:
                time.sleep(0.15)  # both busy with a model
                os.kill(children[0].pid, signal.SIGKILL)
                killed.append(children[0].pid)
            time.sleep(0.01)

    thread = threading.Thread(target=killer)
    thread.start()
    r = C.census(sources, out=tmp_path / "out", workers=2, summary=False)
    thread.join()
    assert killed and r.retried >= 1 and r.failed == 0 and not r.interrupted
    keys = [row["source"] for row in jsonl(tmp_path / "out")]
    assert sorted(keys) == sorted(sources)  # every model once


def test_pool_processes_start_in_the_drivers_environment_and_folder(tmp_path, monkeypatch):
    import multiprocessing

    from blackholes.pipelines import runner

    monkeypatch.setattr(runner, "pool_context", lambda: multiprocessing.get_context("forkserver"))
    for i in range(2):  # the forkserver starts with the first census: the second's settings must still reach it
        cache_model(tmp_path / f"hub{i}", f"org/m{i}", tied=True, seed=i)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / f"hub{i}"))
        write_model(tmp_path / f"dir{i}" / "local", tied=True, seed=i)
        monkeypatch.chdir(tmp_path / f"dir{i}")
        r = C.census([f"org/m{i}", "local"], out=None, workers=2)  # workers=1 scans in this process
        assert [row["error"] for row in r.rows] == [None, None]


# ---------------------------------------------------------------------------- the command, the summary


def run_cli(argv) -> int:
    from blackholes.cli import census as cli

    parser = argparse.ArgumentParser(prog="blackholes")
    cli.add_parser(parser.add_subparsers()).set_defaults(_run=cli.run)
    args = parser.parse_args(["census", *argv])
    try:
        return args._run(args)
    except BlackholesError as e:
        print(f"blackholes: error: {e}")
        return 2


def test_cli_census_summary_groups_fine_tunes(tmp_path, capsys):
    base = write_model(tmp_path / "base", tied=True, seed=1)
    emb = base["model.embed_tokens.weight"]
    _, inverse, counts = np.unique(emb, axis=0, return_inverse=True, return_counts=True)
    dead = counts[inverse.ravel()] > 1
    tuned = emb.copy()
    tuned[~dead] += np.float32(0.5)  # a fine-tune: trained rows moved, the dead rows untouched
    write_model(tmp_path / "tuned", tied=True, seed=1, embed=tuned)
    write_model(tmp_path / "other", tied=True, seed=7, sizes=(30, 2))
    listing = tmp_path / "models.txt"
    listing.write_text(f"# the census\n{tmp_path / 'tuned'}\n{tmp_path / 'other'}\n{tmp_path / 'gone'}\n")
    out = tmp_path / "out"
    assert run_cli([str(tmp_path / "base"), "--from-file", str(listing), "--out", str(out), "--workers", "2",
                    "--masks"]) == 0
    text = capsys.readouterr()
    assert "4 model matrices (4 scanned, 0 already done, 1 failed)" in text.out
    assert f"Summary: {out}/census.html" in text.out and text.err.count("\n") == 5  # the plan, then a line a model
    assert text.err.startswith("census: 4 model matrices to scan on 2 local processes\n[1/4, 0 failed, ")
    md, page = (out / "census.md").read_text(), (out / "census.html").read_text()
    table = [line for line in md.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert "`other`" in table[0] and "**32**" in table[0]  # sorted by black-hole tokens: 32 before 15
    assert "3 models share 3 hole vectors" not in md and "2 models share 3 hole vectors" in md
    assert "15 tokens: " in md and "Failed" in md and "gone" in md
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page
    rows = {r["source"]: r for r in jsonl(out)}
    mask = load_file(str(out / rows[str(tmp_path / "base")]["mask"]))
    expected = blackholes.scan(str(tmp_path / "base"))
    assert np.array_equal(mask["mask"], expected.mask) and np.array_equal(mask["black_hole_id"], expected.black_hole_id)
    assert run_cli([str(tmp_path / "base"), "--out", str(out), "--workers", "0"]) == 2


def test_to_pandas():
    r = C.CensusResult(rows=[{"source": "a", "black_hole_tokens": 3}])
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(BlackholesError, match="needs pandas"):
            r.to_pandas()
    else:
        assert list(r.to_pandas()["black_hole_tokens"]) == [3]


# ---------------------------------------------------------------------------- GGUF and Ollama (when present)


def write_gguf(path: Path, tensors: dict) -> Path:
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def readable_by_load_matrix(source: str) -> None:
    try:
        blackholes.load_matrix(source)
    except BlackholesError as e:
        pytest.skip(f"load_matrix does not read this source yet ({e})")


def test_gguf_models_in_the_hf_cache(tmp_path, monkeypatch):
    pytest.importorskip("blackholes.sources.gguf", reason="GGUF support not in this version")
    emb, head = planted(1, n=64, d=32), planted(2, n=64, d=32, sizes=(5,))
    snap = tmp_path / "hub" / "models--org--untied-gguf" / "snapshots" / "f00d"
    snap.mkdir(parents=True)
    write_gguf(snap / "m.gguf", {"token_embd.weight": emb, "output.weight": head})
    snap = tmp_path / "hub" / "models--org--tied-gguf" / "snapshots" / "d00d"
    snap.mkdir(parents=True)
    write_gguf(snap / "m.gguf", {"token_embd.weight": head})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    readable_by_load_matrix("org/tied-gguf@d00d")
    rows = by_key(C.census(hf_cache=True, out=None, workers=2).rows)
    untied = "org/untied-gguf@f00d"
    assert set(rows) == {(untied, "default"), (untied, "input"), ("org/tied-gguf@d00d", "default")}
    tied = rows["org/tied-gguf@d00d", "default"]
    assert rows[untied, "default"]["hole_sizes"] == oracle_sizes(head) == tied["hole_sizes"]
    assert rows[untied, "input"]["hole_sizes"] == oracle_sizes(emb)
    assert {r["format"] for r in rows.values()} == {"gguf"}
    assert rows[untied, "default"]["tied"] is False and tied["tied"] is True


def test_ollama_store(tmp_path, monkeypatch):
    ollama = pytest.importorskip("blackholes.sources.ollama", reason="Ollama support not in this version")
    x = planted(1, n=64, d=32)
    path = write_gguf(tmp_path / "m.gguf", {"token_embd.weight": x})
    data = path.read_bytes()
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    store = tmp_path / "ollama"
    (store / "blobs").mkdir(parents=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(data)
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": len(data)}]}))
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    names = C.expand_sources(ollama=True)
    assert names == [n if n.startswith("ollama:") else f"ollama:{n}" for n in ollama.list_ollama_models()]
    assert names == ["ollama:tiny:latest"]
    readable_by_load_matrix(names[0])
    (row,) = C.census(names, out=None, workers=1).rows
    assert row["error"] is None and row["format"] == "gguf" and row["hole_sizes"] == oracle_sizes(x)
    assert row["revision"] == f"sha256:{digest}" and row["tied"] is True


# ---------------------------------------------------------------------------- Dask


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_is_one_line_before_any_work(hub, tmp_path):
    pytest.importorskip("distributed", reason=NO_DASK)
    t0 = time.perf_counter()
    with pytest.raises(BlackholesError, match="cannot reach the Dask scheduler at tcp://127.0.0.1") as e:
        C.census(["org/tied"], out=tmp_path / "out", scheduler=f"tcp://127.0.0.1:{free_port()}", connect_timeout=1)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists() and time.perf_counter() - t0 < 15


@pytest.fixture
def cluster():
    distributed = pytest.importorskip("distributed", reason=NO_DASK)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, worker_dashboard_address=None) as lc:
        with distributed.Client(lc) as client:
            yield client


def test_dask_cluster_gives_the_local_pool_rows(hub, tmp_path, cluster):
    local = C.census(["org/missing"], hf_cache=True, out=tmp_path / "local", workers=2, summary=False)
    dask = C.census(["org/missing"], hf_cache=True, out=tmp_path / "dask", scheduler=cluster, summary=False)
    assert [strip(r) for r in dask.rows] == [strip(r) for r in local.rows]
    assert dask.failed == local.failed == 3 and dask.scanned == 8
    assert {r["worker"] for r in dask.rows} <= {f"{socket.gethostname()}:{pid}" for pid in
                                                cluster.run(os.getpid).values()}
    assert sorted(os.listdir(tmp_path / "dask" / "models")) == sorted(os.listdir(tmp_path / "local" / "models"))
    assert cluster.status == "running"  # a Client passed in is left open


def test_dask_worker_killed_mid_model(tmp_path, cluster):
    sources = []
    for i in range(3):
        sources.append(slow_model(tmp_path / f"slow{i}.safetensors", seed=i))
    thread, killed = support.kill_a_busy_worker(cluster, "census-", within=20)
    r = C.census(sources, out=tmp_path / "out", scheduler=cluster, summary=False)
    thread.join()
    assert killed and r.failed == 0 and r.scanned == 3
    rows = jsonl(tmp_path / "out")
    assert sorted(row["source"] for row in rows) == sorted(sources)  # every model exactly once
    for row in rows:
        words = load_file(row["path"])["embeddings"].view(np.uint64).ravel()  # one 8-byte word per row
        assert row["unique_vectors"] == len(np.unique(words))


def test_the_parent_of_a_census_imports_no_torch_and_no_dask(tmp_path):
    import subprocess
    import sys

    for i in range(2):
        write_model(tmp_path / f"m{i}", tied=True, seed=i)
    code = ("import sys; from blackholes.pipelines.census import census; "
            f"r = census([{str(tmp_path / 'm0')!r}, {str(tmp_path / 'm1')!r}], out=None, workers=2); "
            "print(len(r.rows), r.failed, 'torch' in sys.modules, 'distributed' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout.split()
    assert out == ["2", "0", "False", "False"]
