"""sweep: grids, batches, the per-step census against dynamics --census, resume, the pool and Dask."""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blackholes.analysis.dynamics import analyze
from blackholes.analysis.lifecycle import census_of_recording
from blackholes.errors import BlackholesError
from blackholes.io.dtypes import to_float32
from blackholes.io.safetensors import read_header
from blackholes.pipelines import sweep as S
from blackholes.training.config import TrainConfig
from blackholes.training.loop import train
from blackholes.io.recording import Recording
from train_helpers import write_corpus

TINY = dict(vocab=32, context=16, width=16, layers=1, heads=2)
VARIES = ("seconds", "batch", "part", "recording")  # what two sweeps of one grid may differ in


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("sweep") / "corpus.txt")


def same_rows(a: list[dict], b: list[dict]) -> None:
    strip = lambda rows: [{k: v for k, v in r.items() if k not in VARIES} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and text
    return text


# ---------------------------------------------------------------------------- the grid


def test_values_lists_ranges_and_choices():
    assert S.parse_values("sigma", "0,log:1e-6:1e-1:6") == [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert S.parse_values("sigma", "1e-6:1e-4:3:log") == S.parse_values("sigma", "log:1e-6:1e-4:3")
    assert S.parse_values("lr", "lin:0:1:5") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert S.parse_values("sigma", "log:1e-5:1e-1:9")[1] == 3.16228e-05  # 6 digits: typed back into train
    assert S.parse_values("seeds", "0-3,2,9") == [0, 1, 2, 3, 9]
    assert S.parse_values("steps", "log:10:1000:3") == [10, 100, 1000]
    assert S.parse_values("precision", ["bf16", "fp32,bf16-mixed"]) == ["bf16", "fp32", "bf16-mixed"]
    assert S.parse_values("corpus", "a.txt,b.txt") == ["a.txt", "b.txt"]


@pytest.mark.parametrize("name, spec, words", [
    ("sigma", "", "the grid is empty"),
    ("sigma", "log:0:1:3", "needs START > 0"),
    ("sigma", "abc", "cannot read 'abc'"),
    ("seed", "7-3", "runs backwards"),
    ("seed", "1.5", "cannot read"),
    ("precision", "fp8", "not one of bf16, fp32, bf16-mixed"),
    ("sigma", "log:1e-3:1:0", "between 1 and"),
])
def test_bad_values_are_one_line(name, spec, words):
    with pytest.raises(BlackholesError) as e:
        S.parse_values(name, spec)
    assert words in one_line(e)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=0, max_size=4))
def test_run_ids_enumerate_the_product_last_option_fastest(sizes):
    names = ["sigma", "seed", "lr", "clip"][: len(sizes)]
    values = {n: [float(i) if n != "seed" else i for i in range(k)] for n, k in zip(names, sizes)}
    grid = S.Grid.from_options({n: v for n, v in values.items()})
    swept = [n for n in names if len(values[n]) > 1]
    expected = [dict(zip(swept, combo)) for combo in itertools.product(*(values[n] for n in swept))]
    assert grid.size == len(expected) == max(1, np.prod(sizes, dtype=int))
    assert [grid.swept_values(r) for r in range(grid.size)] == expected


@settings(max_examples=40, deadline=None)
@given(st.floats(1e-12, 1e3), st.floats(1e-12, 1e3), st.integers(2, 60))
def test_log_ranges_have_n_values_and_both_ends(a, b, n):
    values = S.parse_values("sigma", f"log:{a!r}:{b!r}:{n}")
    assert len(values) == len(set(values)) or a == b or len(values) < n
    assert values[0] == float(f"{a:.6g}") and (a == b or values[-1] == float(f"{b:.6g}"))


def test_record_ids():
    assert S.parse_run_ids("1,3-4", 6) == {1, 3, 4}
    with pytest.raises(BlackholesError, match="run 6 is not in the grid"):
        S.parse_run_ids("5-6", 6)
    with pytest.raises(BlackholesError, match="cannot read 'x'"):
        S.parse_run_ids("x", 6)


def test_planning_needs_no_torch_and_agrees_with_the_stacked_model():
    import subprocess
    import sys

    code = ("import sys; from blackholes.pipelines import sweep as S; S.Grid.from_options({'seed': '0-3'}); "
            "S.decide_compile({0: S.TrainConfig()}, 'auto'); print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    from blackholes.training.batched import SHAPE_FIELDS

    assert S.SHAPE_FIELDS == SHAPE_FIELDS


def test_batches_group_shapes_and_use_every_worker():
    configs = {i: TrainConfig(seed=i, precision=("bf16", "fp32")[i % 2], **TINY) for i in range(10)}
    tasks = S.plan_batches(list(range(10)), configs, runs_per_batch=4)
    assert [t.runs for t in tasks] == [(0, 2, 4), (6, 8), (1, 3, 5), (7, 9)]  # evenly: 3 + 2, not 4 + 1
    assert len(S.plan_batches(list(range(10)), configs, runs_per_batch=16, workers=6)) == 6
    grid = {0: TrainConfig(steps=70_000), 1: TrainConfig(steps=70_000, precision="fp32"),
            2: TrainConfig(steps=70_000, precision="fp32", seed=1), 3: TrainConfig(steps=1_000, width=32)}
    # Run 0 is alone in its shape and long enough to have compiled under the older rule: it keeps its
    # (eager) numerics. Only a run whose recipe says compiled compiles, and it trains alone.
    assert S.decide_compile(grid, "auto") == {0: False, 1: False, 2: False, 3: False}
    assert not any(S.decide_compile(grid, "never").values())
    grid[4] = TrainConfig(steps=70_000, precision="fp32", numerics="compiled")
    grid[5] = TrainConfig(steps=70_000, precision="fp32", numerics="compiled", seed=1)
    assert S.decide_compile(grid, "auto") == {0: False, 1: False, 2: False, 3: False, 4: True, 5: True}
    assert [t.runs for t in S.plan_batches(list(grid), grid)] == [(0,), (1, 2), (3,), (4,), (5,)]
    with pytest.raises(BlackholesError, match="--no-compile .* and --numerics compiled disagree"):
        S.decide_compile(grid, "never")


# ---------------------------------------------------------------------------- bad input, before any training


@pytest.mark.parametrize("options, words", [
    ({"sigma": ""}, "--sigma: the grid is empty"),
    ({"every": "1,2"}, "--every cannot be swept"),
    ({"threads": "1-2"}, "--threads cannot be swept"),
    ({"record": "0,9"}, "--record: run 9 is not in the grid (runs 0-1)"),
    ({"sigma": "log:1e-6:1e-1:1000", "seed": "0-999"}, "the grid has 1,000,000 runs"),
    ({"init": "normal", "sigma": "0,0.02"}, "run 0 (sigma=0, seed=0): --init normal"),
    ({"context": "16,64"}, "run 1 (seed=0, context=64): corpus"),
    ({"out_of_grid": 1}, "--out-of-grid is not a train option"),
])
def test_bad_input_is_one_line_before_any_training(corpus, tmp_path, options, words):
    base = {"corpus": str(corpus), "seed": "0-1", **TINY, "steps": 3}
    with pytest.raises(BlackholesError) as e:
        S.sweep(tmp_path / "s", **{**base, **options, "corpus": str(corpus) if "context" not in options
                                   else str(write_corpus(tmp_path / "short.txt", n=40))})
    assert words in one_line(e)
    assert not (tmp_path / "s").exists()


def test_a_different_grid_in_the_same_folder_is_refused(corpus, tmp_path):
    S.sweep(tmp_path / "s", corpus=str(corpus), seed="0-1", steps=2, **TINY)
    with pytest.raises(BlackholesError) as e:
        S.sweep(tmp_path / "s", corpus=str(corpus), seed="0-2", steps=2, **TINY)
    assert "holds a different sweep (2 runs: seed 0,1)" in one_line(e)


# ---------------------------------------------------------------------------- what a run records


@pytest.fixture(scope="module")
def recorded(corpus, tmp_path_factory):
    """8 runs of 70 steps (past one ring of 64), every run recorded."""
    out = tmp_path_factory.mktemp("recorded") / "s"
    return S.sweep(out, corpus=str(corpus), sigma="0,1e-3", precision="bf16,bf16-mixed", seed="0-1", steps=70,
                   record="all", **TINY)


def test_files_follow_the_format(recorded):
    lines = [json.loads(x) for x in (recorded.out / "runs.jsonl").read_text().splitlines()]
    assert sorted(r["run"] for r in lines) == list(range(8)) and recorded.trained == 8
    for row in lines:
        assert {"run", "options", "final", "hole_sizes", "freeze_step", "first_fission", "final_loss", "seconds",
                "batched", "error"} <= set(row) and row["error"] is None and row["batched"]
        assert set(row["final"]) == {"distinct", "holes", "tokens_in_holes", "largest", "never_seen_one_point"}
        assert row["options"]["steps"] == 70 and row["options"]["numerics"] == "eager" and not row["compiled"]
        assert "compile" not in row["options"]  # the older spelling of numerics: one name per setting
    header = read_header(recorded.out / "steps.safetensors")
    assert json.loads(header.metadata["runs"]) == list(range(8))
    assert json.loads(header.metadata["steps"]) == list(range(71))
    dtypes = {n: header.tensors[n].dtype for n in S.STEP_ARRAYS}
    assert dtypes == {"loss": "F32", "distinct": "I32", "holes": "I32", "tokens_in_holes": "I32", "largest": "I32",
                      "never_seen_one_point": "BOOL", "hole_logit": "F32", "hole_speed": "F32"}
    assert all(header.tensors[n].shape == (8, 71) for n in S.STEP_ARRAYS)
    assert json.loads((recorded.out / "sweep.json").read_text())["swept"]["precision"] == ["bf16", "bf16-mixed"]


def test_recordings_are_the_train_recordings_byte_for_byte(recorded, tmp_path):
    for row in recorded.runs[::3]:
        mine = recorded.out / "recordings" / f"run-{row['run']:06d}.safetensors"
        theirs = train(TrainConfig(**row["options"]), tmp_path / f"t{row['run']}.safetensors", progress=False).path
        assert mine.read_bytes() == theirs.read_bytes()


def test_every_numerics_and_precision_is_the_train_run_bit_for_bit_stacked_and_alone(corpus, tmp_path):
    """Eager runs stacked (two seeds), compiled runs each alone, and an eager run alone in its shape (width 8),
    in bf16, fp32 and bf16-mixed: every recording is byte for byte `train`'s with the row's options."""
    grid = dict(corpus=str(corpus), precision="bf16,fp32,bf16-mixed", numerics="eager,compiled", seed="0-1",
                steps=4, **TINY)
    r = S.sweep(tmp_path / "s", record="all", workers=1, **grid)
    alone = S.sweep(tmp_path / "alone", record="all", workers=1, **{**grid, "seed": 0, "numerics": "eager",
                                                                     "precision": "bf16", "width": 8})
    assert r.trained == 12 and alone.trained == 1 and not alone.runs[0]["compiled"]
    for row in r.runs:
        compiled = row["options"]["numerics"] == "compiled"
        assert row["compiled"] == compiled and row["batched"] == (not compiled), row
    for sweep_result in (r, alone):
        for row in sweep_result.runs:
            mine = sweep_result.out / "recordings" / f"run-{row['run']:06d}.safetensors"
            theirs = train(TrainConfig(**row["options"]), tmp_path / f"t{row['run']}.safetensors", progress=False)
            assert theirs.numerics == row["options"]["numerics"]
            assert mine.read_bytes() == theirs.path.read_bytes(), row["options"]


def test_the_per_step_census_is_dynamics_census_of_the_recording(recorded):
    for i, row in enumerate(recorded.runs):
        path = recorded.out / "recordings" / f"run-{row['run']:06d}.safetensors"
        c = census_of_recording(path)
        a = {n: v[i] for n, v in recorded.steps.items()}
        for name in ("distinct", "holes", "tokens_in_holes", "largest"):
            assert np.array_equal(a[name], getattr(c, name)), name
        ns = c.never_seen["tokens"]
        one = (c.group_ids[:, ns] == c.group_ids[:, ns[:1]]).all(axis=1)
        assert np.array_equal(a["never_seen_one_point"], one)
        rec = Recording(path)
        floats = lambda name: to_float32(np.asarray(rec.tensor(name)), rec.dtype_of(name))  # noqa: E731
        assert np.array_equal(a["loss"][1:], floats("losses")[1:])
        logits = floats("logits")
        want = np.full(71, np.nan, np.float32)
        want[1:] = np.where(one[:-1], logits[1:, ns[0]], np.nan)
        assert np.array_equal(a["hole_logit"], want, equal_nan=True)
        speed = analyze(str(path)).series["speed"].astype(np.float32)
        assert np.array_equal(a["hole_speed"], speed, equal_nan=True)
        fissions = [e.step for e in c.events if e.kind == "fission"]
        assert row["first_fission"] == (min(fissions) if fissions else None)
        final = c.group_ids[-1]
        sizes = np.bincount(final, minlength=len(final))
        assert row["hole_sizes"] == sorted((int(s) for s in sizes if s >= 2), reverse=True)
        assert row["final"]["never_seen_one_point"] == bool(one[-1])
        if row["hole_sizes"]:
            largest = int(c.largest_id[-1])
            last = max(-1 if m is None else m for m, g in zip(c.last_motion, final) if g == largest)
            assert row["freeze_step"] == (None if last == 70 else 1 if last < 0 else last + 1)


# ---------------------------------------------------------------------------- resume, the engines, fallback


def small_grid(corpus, **kw):
    return dict(corpus=str(corpus), sigma="0,1e-2", seed="0-2", steps=5, runs_per_batch=2, **TINY, **kw)


def here(corpus, **kw):
    return {"workers": 1, **small_grid(corpus, **kw)}


def test_ctrl_c_keeps_finished_batches_and_a_rerun_resumes(corpus, tmp_path):
    whole = S.sweep(tmp_path / "whole", **here(corpus))
    seen = []

    def interrupt(task, outcome):
        seen.append(task.runs)
        if len(seen) == 2:
            raise KeyboardInterrupt

    part = S.sweep(tmp_path / "s", on_batch=interrupt, **here(corpus))
    assert part.interrupted and [r["run"] for r in part.runs] == sorted(seen[0] + seen[1])
    assert json.loads(read_header(tmp_path / "s" / "steps.safetensors").metadata["runs"]) == part.run_ids
    with open(tmp_path / "s" / "runs.jsonl", "a") as f:
        f.write('{"run": 5, "opt')  # a line torn by a kill: ignored
    rest = S.sweep(tmp_path / "s", **here(corpus))
    assert not rest.interrupted and rest.skipped == 4 and rest.trained == 2
    same_rows(rest.runs, whole.runs)
    assert rest.run_ids == whole.run_ids == list(range(6))
    for name in S.STEP_ARRAYS:
        assert np.array_equal(rest.steps[name], whole.steps[name], equal_nan=True), name
    again = S.sweep(tmp_path / "s", **here(corpus))
    assert again.trained == 0 and again.skipped == 6


def test_a_batch_that_fails_is_error_rows_and_is_retried(corpus, tmp_path, monkeypatch):
    from blackholes.pipelines import sweep_batch

    real = sweep_batch.train_runs

    def broken(task, progress):
        if 0 in task.runs:
            raise RuntimeError("boom\nsecond line")
        return real(task, progress)

    monkeypatch.setattr(sweep_batch, "train_runs", broken)
    r = S.sweep(tmp_path / "s", **here(corpus))
    assert r.failed == 2 and [row["error"] for row in r.runs[:2]] == ["RuntimeError: boom second line"] * 2
    assert r.run_ids == [2, 3, 4, 5]  # the failed batch (runs 0, 1) has no per-step rows
    monkeypatch.setattr(sweep_batch, "train_runs", real)
    again = S.sweep(tmp_path / "s", **here(corpus))
    assert again.trained == 2 and again.failed == 0 and again.run_ids == list(range(6))


def test_runs_trained_one_by_one_when_the_check_fails_are_the_same(corpus, tmp_path, monkeypatch):
    stacked = S.sweep(tmp_path / "a", **here(corpus))
    import blackholes.training.batched as B

    monkeypatch.setattr(B, "agrees_with_single", lambda *a, **k: False)
    alone = S.sweep(tmp_path / "b", **here(corpus))
    assert all(not r["batched"] and "one run at a time" in r["note"] for r in alone.runs if r["batch"]["runs"] > 1)
    for name in S.STEP_ARRAYS:
        assert np.array_equal(alone.steps[name], stacked.steps[name], equal_nan=True)


def test_a_process_pool_gives_the_same_runs(corpus, tmp_path):
    one = S.sweep(tmp_path / "a", workers=1, **small_grid(corpus))
    pool = S.sweep(tmp_path / "b", workers=2, **small_grid(corpus))
    same_rows(pool.runs, one.runs)


def test_a_dask_cluster_gives_the_local_runs(corpus, tmp_path):
    distributed = pytest.importorskip("distributed")
    local = S.sweep(tmp_path / "local", **here(corpus))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,  # inproc://, no sockets
                                  dashboard_address=None) as lc, distributed.Client(lc) as client:
        dask = S.sweep(tmp_path / "dask", scheduler=client, **small_grid(corpus))
    same_rows(dask.runs, local.runs)
    for name in S.STEP_ARRAYS:
        assert np.array_equal(dask.steps[name], local.steps[name], equal_nan=True)


# ---------------------------------------------------------------------------- the command


def command(argv):
    from blackholes.cli import sweep as cli

    parser = argparse.ArgumentParser(prog="blackholes")
    cli.add_parser(parser.add_subparsers())
    return cli.run(parser.parse_args(["sweep", *map(str, argv)]))


def test_the_command_trains_prints_and_resumes(corpus, tmp_path, capsys):
    argv = ["--corpus", corpus, "--sigma", "0,1e-2", "--seeds", "0-1", "--steps", "4", "--vocab", "32", "--context",
            "16", "--width", "16", "--layers", "1", "--out", tmp_path / "s"]
    assert command(argv) == 0
    out = capsys.readouterr().out
    assert "sigma=0: 2 runs" in out and "Report: " in out and (tmp_path / "s" / "sweep.html").is_file()
    assert command([*argv, "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("Report: ")


def test_the_command_refuses_a_sweep_of_switches(corpus, tmp_path):
    with pytest.raises(BlackholesError, match="--every cannot be swept"):
        command(["--corpus", corpus, "--every", "1,2", "--out", tmp_path / "s"])


def test_a_resume_row_without_its_fields_is_trained_again_never_a_crash(corpus, tmp_path):
    first = S.sweep(tmp_path / "s", **here(corpus))
    part = first.runs[0]["part"]
    with open(tmp_path / "s" / "runs.jsonl", "a") as f:  # rows another version, or a hand, left behind
        f.write(json.dumps({"run": 0, "part": part, "error": None}) + "\n")  # no options, no final counts
        f.write(json.dumps({"run": 1, "options": None, "part": part, "error": None}) + "\n")
        f.write("[1, 2]\n")  # not a row at all
    again = S.sweep(tmp_path / "s", **here(corpus))
    assert again.skipped == 4 and again.trained == 2 and not again.failed
    same_rows(again.runs, first.runs)
