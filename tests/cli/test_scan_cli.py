"""`blackholes scan` from the command line: outputs, errors, start-up weight."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from support import assert_one_line_error, planted, run_blackholes
from safetensors.numpy import save_file

from blackholes.cli import main
from blackholes.errors import BlackholesError


planted = functools.partial(planted, n=64, d=16, sizes=(4, 2))  # small: one line of output per group


@pytest.fixture
def scan_file(tmp_path):
    path = tmp_path / "gamma.safetensors"
    save_file({"gamma": planted()}, str(path))
    return path


def run(*argv, env=None):
    return run_blackholes(*argv, env=env)


def test_scan_writes_mask_and_report(scan_file, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    mask_path, json_path = tmp_path / "black_hole_mask.safetensors", tmp_path / "scan.json"
    p = run("scan", scan_file, "--mask", mask_path, "--json", json_path)
    assert p.returncode == 0, p.stderr
    assert "Unique vectors: 60" in p.stdout and "Degenerate groups: 2" in p.stdout
    assert "Total black hole tokens: 6 (9.38%)" in p.stdout
    mask = load_file(str(mask_path))["mask"]  # exactly as the original notebooks read it
    assert mask.dtype == torch.bool and mask.shape == (64,) and int(mask.sum()) == 6
    doc = json.loads(json_path.read_text())
    assert doc["unique_vectors"] == 60 and doc["black_hole_tokens"] == 6 and doc["key"] == "gamma"
    assert [g["size"] for g in doc["groups"]] == [4, 2]
    assert sorted(os.listdir(tmp_path)) == sorted([scan_file.name, mask_path.name, json_path.name])


def test_scan_does_not_import_torch_or_matplotlib(scan_file):
    code = textwrap.dedent(
        f"""
        import sys
        from blackholes.cli import main
        assert main(["scan", {str(scan_file)!r}, "--quiet"]) == 0
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "matplotlib", "transformers"))
        print(heavy)
        """
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]", f"scan imported heavy modules: {p.stdout}"


def test_cached_model_id(tmp_path):
    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    save_file({"model.embed_tokens.weight": planted(seed=1), "lm_head.weight": planted(seed=2, sizes=(3,))},
              str(snap / "model.safetensors"))
    (snap / "config.json").write_text('{"tie_word_embeddings": false}')
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("abc123")
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    p = run("scan", "org/tiny", "--json", tmp_path / "r.json", env=env)
    assert p.returncode == 0, p.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["key"] == "lm_head.weight" and [g["size"] for g in doc["groups"]] == [3]
    p = run("scan", "org/tiny", "--matrix", "input", "--quiet", env=env)
    assert p.returncode == 0 and p.stdout == ""


def write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.fixture
def scan_bad_sources(tmp_path):
    """name -> (argv after 'scan', expected words in the one-line error)."""
    (tmp_path / "empty_dir").mkdir()
    save_file({"a": planted(), "b": planted(seed=3)}, str(tmp_path / "two.safetensors"))
    save_file({"t": np.zeros((2, 3, 4), np.float32)}, str(tmp_path / "3d.safetensors"))
    save_file({"t": np.zeros((0, 4), np.float32)}, str(tmp_path / "empty.safetensors"))
    write(tmp_path / "text.safetensors", b"just some text, definitely not tensors")
    write(tmp_path / "trunc.safetensors", (400).to_bytes(8, "little") + b'{"t": {"dtype": "F32", "sh')
    write(tmp_path / "corrupt.safetensors", (10).to_bytes(8, "little") + b"{not json}")
    (tmp_path / "a_file").write_text("x")
    return {
        "missing file": ([tmp_path / "nope.safetensors"], "no such file"),
        "not safetensors": ([tmp_path / "text.safetensors"], "not a safetensors file"),
        "truncated header": ([tmp_path / "trunc.safetensors"], "truncated"),
        "corrupt header": ([tmp_path / "corrupt.safetensors"], "corrupt JSON"),
        "key not found": ([tmp_path / "two.safetensors", "--key", "c"], "not found in"),
        "ambiguous": ([tmp_path / "two.safetensors"], "pick one with --key: a, b"),
        "not 2-D": ([tmp_path / "3d.safetensors", "--key", "t"], "expected a 2-D"),
        "no 2-D tensor": ([tmp_path / "3d.safetensors"], "no 2-D tensor"),
        "empty tensor": ([tmp_path / "empty.safetensors", "--key", "t"], "is empty"),
        "no weights": ([tmp_path / "empty_dir"], "no safetensors weights"),
        "not cached": (["someorg/not-a-cached-model"], "not in the local Hugging Face cache"),
        "unwritable mask": ([tmp_path / "two.safetensors", "--key", "a", "--mask", tmp_path / "a_file" / "m"],
                            "output directory does not exist"),
        "json is a dir": ([tmp_path / "two.safetensors", "--key", "a", "--json", tmp_path / "empty_dir"],
                          "is a directory"),
    }


CASES = ["missing file", "not safetensors", "truncated header", "corrupt header", "key not found", "ambiguous",
         "not 2-D", "no 2-D tensor", "empty tensor", "no weights", "not cached", "unwritable mask", "json is a dir"]


@pytest.mark.parametrize("case", CASES)
def test_errors_are_one_line(scan_bad_sources, case, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-cache"))
    argv, words = scan_bad_sources[case]
    before = set(os.listdir(tmp_path))
    status = main(["scan", *map(str, argv), "--mask", str(tmp_path / "out_mask.safetensors")]
                  if "--mask" not in argv else ["scan", *map(str, argv)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("blackholes: error: ") and err.count("\n") == 1, err
    assert words in err
    assert set(os.listdir(tmp_path)) == before  # nothing written, not even a temporary file


def test_error_in_a_real_process_has_no_traceback(tmp_path):
    p = run("scan", tmp_path / "missing.safetensors", "--mask", tmp_path / "m.safetensors")
    assert p.returncode == 2
    assert p.stderr.startswith("blackholes: error: no such file") and "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1 and not (tmp_path / "m.safetensors").exists()


# ---------------------------------------------------------------------------- outputs never clobber inputs


def _refused(argv, capsys, words="is an input of this command"):
    return assert_one_line_error(main([str(a) for a in argv]), capsys.readouterr().err, words)


def test_outputs_that_are_inputs_are_refused(scan_file, tmp_path, capsys):
    before = scan_file.read_bytes()
    (tmp_path / "sub").mkdir()
    os.link(scan_file, tmp_path / "hard.safetensors")
    os.symlink(scan_file, tmp_path / "soft.safetensors")
    for out in (scan_file, tmp_path / "sub" / ".." / scan_file.name, tmp_path / "hard.safetensors",
                tmp_path / "soft.safetensors"):
        _refused(["scan", scan_file, "--mask", out], capsys)
        _refused(["scan", scan_file, "--json", out], capsys)
        _refused(["dynamics", scan_file, "--json", out], capsys)
        _refused(["map", scan_file, "--out", tmp_path / "m.png", "--json", out], capsys)
    assert scan_file.read_bytes() == before
    mask = tmp_path / "mask.safetensors"
    assert main(["scan", str(scan_file), "--mask", str(mask), "--quiet"]) == 0
    _refused(["map", scan_file, "--mask", mask, "--out", tmp_path / "m.png", "--json", mask], capsys)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abc")
    _refused(["dynamics", scan_file, "--corpus", corpus, "--json", corpus], capsys)
    assert corpus.read_text() == "abc"
    tok = tmp_path / "tokenizer.json"
    tok.write_text("{}")
    _refused(["scan", scan_file, "--tokenizer", tok, "--json", tok], capsys)
    assert tok.read_text() == "{}"
    _refused(["scan", scan_file, "--mask", tmp_path / "o.x", "--json", tmp_path / "sub" / ".." / "o.x"], capsys,
             "two outputs name the same file")


def test_outputs_in_a_model_folder_do_not_overwrite_its_files(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"model.embed_tokens.weight": planted(), "model.norm.weight": np.ones(16, np.float32)},
              str(folder / "model-00001-of-00002.safetensors"))
    save_file({"lm_head.weight": planted(seed=2)}, str(folder / "model-00002-of-00002.safetensors"))
    weight_map = {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                  "model.norm.weight": "model-00001-of-00002.safetensors",
                  "lm_head.weight": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text('{"tie_word_embeddings": false}')
    snapshot = {p.name: p.read_bytes() for p in folder.iterdir()}
    for name in snapshot:
        _refused(["scan", folder, "--mask", folder / name], capsys)
    hub = tmp_path / "hub" / "models--org--m"
    (hub / "snapshots").mkdir(parents=True)
    (hub / "snapshots" / "abc").symlink_to(folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    _refused(["scan", "org/m", "--json", folder / "config.json"], capsys)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == snapshot
    assert main(["scan", str(folder), "--json", str(folder / "scan.json"), "--quiet"]) == 0  # a new file is fine


def test_map_output_errors_come_before_the_work(scan_file, tmp_path, capsys, monkeypatch):
    import blackholes.analysis.density

    def never(*a, **k):
        raise AssertionError("the map was computed before the output was checked")

    monkeypatch.setattr(blackholes.analysis.density, "density_map", never)
    (tmp_path / "somedir").mkdir()
    err = _refused(["map", scan_file, "--out", tmp_path / "m.png", "--json", tmp_path / "somedir"], capsys,
                   "output path is a directory")
    assert ".tmp" not in err
    _refused(["map", scan_file, "--out", tmp_path / "somedir" / "no" / "m.png"], capsys,
             "output directory does not exist")


def test_check_output_path(tmp_path, monkeypatch):
    import blackholes.io.atomic
    from blackholes.io.paths import check_output_path

    src = tmp_path / "in.safetensors"
    src.write_bytes(b"x")
    assert check_output_path(tmp_path / "out.json", inputs=[src, None]) == tmp_path / "out.json"
    with pytest.raises(BlackholesError, match="is an input"):
        check_output_path(src, inputs=[tmp_path / "." / "in.safetensors"])
    with pytest.raises(BlackholesError, match="output path is a directory"):
        check_output_path(tmp_path)
    with pytest.raises(BlackholesError, match="output directory does not exist"):
        check_output_path(tmp_path / "nope" / "o.json")
    with pytest.raises(BlackholesError, match="output directory does not exist"):
        check_output_path(src / "o.json")  # parent is a file
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root may write anywhere: pretend it may not
        monkeypatch.setattr(blackholes.io.paths.os, "access", lambda p, mode: os.fspath(p) != str(locked))
    try:
        with pytest.raises(BlackholesError, match="permission denied"):
            check_output_path(locked / "o.json")
    finally:
        locked.chmod(0o700)


def test_failed_write_leaves_no_half_file(scan_file, tmp_path, monkeypatch, capsys):
    """A crash while the mask is being written leaves neither the mask nor a temporary file."""
    import blackholes.io.safetensors as tensors

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tensors.struct, "pack", boom)
    out = tmp_path / "out"
    out.mkdir()
    status = main(["scan", str(scan_file), "--mask", str(out / "mask.safetensors")])
    assert status == 2 and "No space left on device" in capsys.readouterr().err
    assert os.listdir(out) == []
