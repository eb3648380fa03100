"""Hostile inputs for every command, through the real CLI (issue 9, item 7).

Each command has a table of cases. A case is a command line, the exit status it must end with
(2: a refusal, exactly one line ``blackholes: error: ...`` on stderr; 0: a correct answer), an
optional phrase that line (or the answer) must hold, and the inputs it needs, built small inside
the case's own empty folder. One checker runs every case and asserts, besides the status and the
line: no traceback anywhere; every file that was in the folder before is byte-identical afterwards
(hashed); nothing new in the folder but the outputs the case expects, and never a ``.*.tmp``.

Cases run in-process (``blackholes.cli.main``, fast) unless they need a real process: inputs that
could hang or read forever (FIFOs, devices, a 1 TB file, a server that is down: always with a
timeout, so a hang fails instead of blocking), sizes that could exhaust memory (run under a memory
cap), the terminal's encoding, and signals. Nothing here is marked xfail: a case that fails names a
bug still open.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file
from support import planted, run_blackholes

from blackholes.cli import main

HANG = 6  # seconds: a case that might block (FIFO, device, dead server) fails after this instead
DEAD_PID = 4194305  # above Linux's largest possible pid: the process that wrote this temporary is gone
KILLED = f".run.safetensors.{DEAD_PID}.k1ll3d.tmp"  # what a SIGKILLed `train --out run.safetensors` leaves
STALE_JSON = f".out.json.{DEAD_PID}.s7a1e.tmp"  # what a killed `scan --json out.json` leaves
NON_UTF8 = os.fsdecode(b"mod\xe8le.safetensors")  # a Latin-1 file name, as old archives unpack them
NON_UTF8_JSON = os.fsdecode(b"r\xe9sultat.json")


M = "model.safetensors"  # planted_matrix(): 64 x 16 F32, one group of 4 rows and one of 2


# ---------------------------------------------------------------------------- matrices (the oracles recompute them)


def planted_matrix() -> np.ndarray:
    return planted(n=64, d=16, sizes=(4, 2))


def special_rows() -> np.ndarray:
    """NaNs of one payload and of another, +0.0 and -0.0, infinities, subnormals: identity is of bits."""
    x = planted(n=24, d=4, sizes=(3,), seed=5)
    bits = x.view(np.uint32)
    bits[0:2] = 0x7FC00000  # two rows of the same NaN: identical
    bits[2] = 0x7FC00001  # a NaN with another payload: a different row
    x[3], x[4], x[5] = 0.0, -0.0, 0.0  # -0.0 is not +0.0 bit for bit
    x[6], x[7], x[8] = np.inf, np.inf, -np.inf
    bits[9:11] = 1  # the smallest subnormal, twice
    return x


def bf16_bits() -> np.ndarray:
    """A BF16 matrix as its raw uint16 bits (the top half of each float32)."""
    return (planted(n=48, d=8, sizes=(5, 3), seed=2).view(np.uint32) >> 16).astype(np.uint16)


def one_row() -> np.ndarray:
    return np.arange(16, dtype=np.float32)[None, :]


def one_col() -> np.ndarray:
    return np.array([[1.0], [2.0], [1.0], [3.0], [2.0], [1.0]], dtype=np.float32)


def all_nan() -> np.ndarray:
    return np.full((8, 4), np.nan, dtype=np.float32)


def spread_matrix(seed: int = 3) -> np.ndarray:
    """300 x 16 with a clear spectrum: column k has spread 0.5 + 2.5 k / 15 (PC1 and PC2 well apart)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((300, 16)) * np.linspace(0.5, 3.0, 16)


def f32_max() -> np.ndarray:
    """Finite float32 values near the largest float32, a few rows at +-3e38 in every coordinate (a run
    about to overflow): finite, but a row's projection can exceed what a float32 holds."""
    x = spread_matrix()
    x = x / np.abs(x).max() * 3e38
    x[:8] = np.sign(x[:8]) * 3e38
    return x.astype(np.float32)


def f64_tiny() -> np.ndarray:
    """Normal float64 values around 1e-300 (numpy's default dtype, saved as F64)."""
    return spread_matrix() * 1e-300


def offset_matrix() -> np.ndarray:
    """Unit-scale rows sharing one offset of 10,000 (a constant bias in every coordinate)."""
    return (spread_matrix() + 1e4).astype(np.float32)


def recording_tensors(records: int = 6) -> dict[str, np.ndarray]:
    """A [records, 16, 4] F32 recording in which tokens 3-6 move as one body at every step."""
    rng = np.random.default_rng(7)
    emb = rng.standard_normal((records, 16, 4)).astype(np.float32)
    grads = rng.standard_normal((records, 16, 4)).astype(np.float32)
    logits = rng.standard_normal((records, 16)).astype(np.float32)
    for t in (emb, grads, logits):
        t[:, 3:7] = t[:, 3:4]
    grads[0] = 0
    return {"embeddings": emb, "grads": grads, "logits": logits, "losses": np.arange(records, dtype=np.float32)}


# ---------------------------------------------------------------------------- inputs, built on demand

INPUTS: dict[str, Callable[[Path], None]] = {}


def builds(*names):
    """Register a builder: ``fn(path)`` creates the input ``path`` (a name at a case folder's top)."""

    def register(fn):
        for name in names:
            INPUTS[name] = fn
        return fn

    return register


def make(folder: Path, name: str) -> Path:
    path = folder / name
    if not os.path.lexists(path):
        INPUTS[name](path)
    return path


def tensors(path: Path, metadata=None, **arrays) -> None:
    save_file(arrays, str(path), metadata=metadata)


def header_file(path: Path, header: bytes, length: int | None = None, data: bytes = b"") -> None:
    """A hand-made safetensors file: its 8-byte header length (``length`` may lie), header, data."""
    n = len(header) if length is None else length
    path.write_bytes(n.to_bytes(8, "little") + header + data)


INPUTS.update({
    "model.safetensors": lambda p: tensors(p, gamma=planted_matrix()),
    "-model.safetensors": lambda p: tensors(p, gamma=planted_matrix()),
    "$\\alpha_{x}$.safetensors": lambda p: tensors(p, gamma=planted_matrix()),
    "two.safetensors": lambda p: tensors(p, a=planted_matrix(), b=planted(n=64, d=16, seed=3)),
    "3d.safetensors": lambda p: tensors(p, t=np.zeros((2, 3, 4), np.float32)),
    "no_rows.safetensors": lambda p: tensors(p, t=np.zeros((0, 16), np.float32)),
    "no_cols.safetensors": lambda p: tensors(p, t=np.zeros((64, 0), np.float32)),
    "special.safetensors": lambda p: tensors(p, w=special_rows()),
    "one_row.safetensors": lambda p: tensors(p, w=one_row()),
    "one_col.safetensors": lambda p: tensors(p, w=one_col()),
    "all_nan.safetensors": lambda p: tensors(p, w=all_nan()),
    "f32_max.safetensors": lambda p: tensors(p, w=f32_max()),
    "f64_tiny.safetensors": lambda p: tensors(p, w=f64_tiny()),
    "offset.safetensors": lambda p: tensors(p, w=offset_matrix()),
    "unit.safetensors": lambda p: tensors(p, w=spread_matrix().astype(np.float32)),
    "zero_bytes.safetensors": lambda p: p.write_bytes(b""),
    "text.safetensors": lambda p: p.write_text("just some notes, definitely not tensors\n"),
    "trunc_header.safetensors": lambda p: header_file(p, b'{"t": {"dtype": "F32", "sh', length=400),
    "corrupt.safetensors": lambda p: header_file(p, b"{not json}"),
    "list_header.safetensors": lambda p: header_file(p, b"[1, 2, 3]"),
    "huge_header.safetensors": lambda p: header_file(p, b"{}", length=2**64 - 1),
    "cut.safetensors": lambda p: header_file(
        p, b'{"w": {"dtype": "F32", "shape": [64, 16], "data_offsets": [0, 4096]}}', data=b"\0" * 100),
    "e8m0.safetensors": lambda p: header_file(
        p, b'{"w": {"dtype": "F8_E8M0", "shape": [4, 4], "data_offsets": [0, 16]}}', data=b"\x7f" * 16),
    "absurd_shape.safetensors": lambda p: header_file(
        p, b'{"w": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 73786976294838206464]}}'),
    "negative_shape.safetensors": lambda p: header_file(
        p, b'{"w": {"dtype": "F32", "shape": [-4, 4], "data_offsets": [0, 64]}}', data=b"\0" * 64),
    "bad_metadata.safetensors": lambda p: header_file(p, b'{"__metadata__": "x"}'),
    "self_link.safetensors": lambda p: p.symlink_to(p.name),
    "cut.gguf": lambda p: p.write_bytes(b"GGUF" + (3).to_bytes(4, "little")),
    "absurd.gguf": lambda p: p.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (2**63 - 1).to_bytes(8, "little")
                                           + (0).to_bytes(8, "little")),
    "empty_dir": lambda p: p.mkdir(),
    "folder.png": lambda p: p.mkdir(),
    "fifo": lambda p: os.mkfifo(p),
    "corpus.txt": lambda p: p.write_bytes(b"the quick brown fox jumps over the lazy dog; " * 8),
    "empty.txt": lambda p: p.write_bytes(b""),
    "binary.bin": lambda p: p.write_bytes(bytes(range(256)) * 2),
    "vocab16.bin": lambda p: p.write_bytes(bytes([0, 1, 2, 7, 8, 9, 10, 11, 12, 13, 14, 15]) * 4),
    "bad_tokenizer.json": lambda p: p.write_text("{broken"),
    STALE_JSON: lambda p: p.write_text('{"half": '),
})


@builds("bf16.safetensors")
def _bf16(path):
    from blackholes.io.safetensors import save_safetensors

    save_safetensors(path, {"w": (bf16_bits(), "BF16")})


@builds(NON_UTF8)
def _non_utf8(path):
    plain = path.with_name("plain.safetensors")
    tensors(plain, gamma=planted_matrix())
    os.rename(plain, path)


@builds("sparse_1tb.bin")
def _sparse(path):
    with open(path, "wb") as f:  # 1 TB of zeros that take no disk: a huge corpus, or a mistaken one
        f.truncate(1 << 40)


@builds("tokenizer.json")
def _tokenizer(path):
    from tokenizers import Tokenizer, models

    words = ["<unk>", "é", "黑洞", "🕳️", "ñandú", "$\\alpha$", "a\nb", "\x00"] + [f"t{i}" for i in range(56)]
    Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")).save(str(path))


@builds("modèle 黑洞 (1).safetensors")
def _unicode_model(path):
    tensors(path, gamma=planted_matrix())
    make(path.parent, "tokenizer.json")


@builds("link_to_model.json", "hardlink_to_model.safetensors", "model_hardlink.png")
def _model_links(path):
    model = make(path.parent, "model.safetensors")
    if path.name.startswith("link"):
        path.symlink_to(model.name)
    else:
        os.link(model, path)


@builds("corpus_hardlink.txt", "corpus_symlink.txt", "recording_hardlink.safetensors")
def _other_links(path):
    target = make(path.parent, "recording.safetensors" if "recording" in path.name else "corpus.txt")
    if "symlink" in path.name:
        path.symlink_to(target.name)
    else:
        os.link(target, path)


def model_folder(path: Path, config: str | None, **arrays) -> None:
    path.mkdir()
    if arrays:
        tensors(path / "model.safetensors", **arrays)
    if config is not None:
        (path / "config.json").write_text(config)


def untied(seed: int = 0) -> dict[str, np.ndarray]:
    return {"model.embed_tokens.weight": planted(n=32, d=8, sizes=(4,), seed=seed),
            "lm_head.weight": planted(n=32, d=8, sizes=(2,), seed=seed + 1)}


INPUTS.update({
    "model_dir": lambda p: model_folder(p, '{"tie_word_embeddings": false}', **untied()),
    "tied_string": lambda p: model_folder(p, '{"tie_word_embeddings": "true"}', **untied()),
    "bad_config": lambda p: model_folder(p, "{not json", **untied()),
    "list_config": lambda p: model_folder(p, "[1, 2]", **untied()),
})


@builds("dangling")
def _dangling(path):
    model_folder(path, "{}")
    (path / "model.safetensors").symlink_to("../blobs/3f2a9c")  # the blob of a download that never finished


@builds("shard_missing", "shard_cut")
def _shards(path):
    model_folder(path, '{"tie_word_embeddings": false}')
    emb, head = untied().values()
    tensors(path / "model-00001-of-00002.safetensors", **{"model.embed_tokens.weight": emb})
    if path.name == "shard_cut":  # a partial download: half the file
        tensors(path / "full.safetensors", **{"lm_head.weight": head})
        data = (path / "full.safetensors").read_bytes()
        (path / "full.safetensors").unlink()
        (path / "model-00002-of-00002.safetensors").write_bytes(data[: len(data) // 2])
    weight_map = {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                  "lm_head.weight": "model-00002-of-00002.safetensors"}
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def mask_file(path: Path, *, length: int = 64, ids_dtype=np.int32, **change) -> None:
    """A ``scan --mask`` file for planted_matrix() (its group of 4 marked), with ``change`` applied."""
    mask = np.zeros(length, bool)
    members = [i for i in (3, 24, 50, 53) if i < length]
    mask[members] = True
    ids = np.where(mask, 1, 0).astype(ids_dtype)
    for what, (row, value) in change.items():
        (mask if what == "mask" else ids)[row] = value
    tensors(path, mask=mask, black_hole_id=ids)


INPUTS.update({
    "mask.safetensors": lambda p: mask_file(p),
    "mask_short.safetensors": lambda p: mask_file(p, length=63),
    "mask_negative_id.safetensors": lambda p: mask_file(p, ids=(3, -5)),
    "mask_huge_id.safetensors": lambda p: mask_file(p, ids=(3, 2**31 - 1)),
    "mask_disagrees.safetensors": lambda p: mask_file(p, ids=(7, 1)),
    "mask_float_id.safetensors": lambda p: mask_file(p, ids_dtype=np.float32),
    "mask_all.safetensors": lambda p: tensors(p, mask=np.ones(64, bool)),
})


def recording(path: Path, meta: dict | None = None, records: int = 6, **arrays) -> None:
    """Save a recording (see :func:`recording_tensors`); ``meta`` values None are left out."""
    t = {**recording_tensors(records), **arrays}
    m = {"steps": json.dumps(list(range(records))), "never_seen": "[3, 4, 5, 6]", "complete": "true", **(meta or {})}
    tensors(path, metadata={k: v for k, v in m.items() if v is not None}, **t)


INPUTS.update({
    "recording.safetensors": lambda p: recording(p),
    "enregistrement 黑洞.safetensors": lambda p: recording(p),
    "rec_one_step.safetensors": lambda p: recording(p, {"steps": "[0]"}, records=1),
    "rec_bad_logits.safetensors": lambda p: recording(p, logits=np.zeros((6, 15), np.float32)),
    "rec_step_2_63.safetensors": lambda p: recording(p, {"steps": json.dumps([0, 1, 2, 3, 4, 2**63])}),
    "rec_steps_back.safetensors": lambda p: recording(p, {"steps": "[0, 1, 5, 3, 4, 6]"}),
    "rec_never_outside.safetensors": lambda p: recording(p, {"never_seen": "[3, 400]"}),
    "rec_never_huge.safetensors": lambda p: recording(p, {"never_seen": json.dumps([3, 10**30])}),
    "rec_never_one.safetensors": lambda p: recording(p, {"never_seen": "[3]"}),
    "rec_no_never_seen.safetensors": lambda p: recording(p, {"never_seen": None}),
    "rec_nan.safetensors": lambda p: recording(p, embeddings=np.full((6, 16, 4), np.nan, np.float32)),
})


@builds(KILLED)
def _killed(path):
    """What `train` leaves when killed outright: the file preallocated for every record, the header written
    up front (complete: false, no interrupted_at_step), the records after the third never written (zeros)."""
    t = recording_tensors()
    for name in ("embeddings", "grads", "logits", "losses"):
        t[name][3:] = 0
    recording(path, {"complete": "false"}, **t)


@builds("plots_trap", "census_trap", "report_trap", "plots_holding_rec")
def _output_traps(path):
    """Folders in which a file the command will write is already a link to its input (or is its input)."""
    path.mkdir()
    target = make(path.parent, M if path.name == "report_trap" else "recording.safetensors")
    name = {"plots_trap": "dynamics_spread.png", "census_trap": "census.png", "report_trap": "report.html"}
    if path.name in name:
        (path / name[path.name]).symlink_to(Path("..") / target.name)
    else:  # the recording itself was saved under a plot's name
        recording(path / "dynamics_speed.png")


@builds("notes_dir")
def _notes(path):
    path.mkdir()
    (path / "notes.txt").write_text("my notes\n")


@builds("earlier_run", "run_linked")
def _earlier_run(path):
    """A folder laid out like an earlier `reproduce` run; in earlier_run its 'recording' and 'map' are in
    fact the user's own files, in run_linked its report.html is a hard link to corpus.txt."""
    (path / "plots").mkdir(parents=True)
    corpus = make(path.parent, "corpus.txt")
    if path.name == "run_linked":
        os.link(corpus, path / "report.html")
    else:
        (path / "recording.safetensors").write_bytes(corpus.read_bytes())
        (path / "plots" / "map_final.png").write_bytes(corpus.read_bytes())
    (path / "report.md").write_text("# an earlier report\n")


# ---------------------------------------------------------------------------- one case, one checker


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]  # after `blackholes`; relative paths name files in the case's own folder
    status: int = 2  # 2: refused in one line; 0: a correct answer
    words: str | None = None  # in the error line (status 2) or on stdout (status 0)
    needs: tuple[str, ...] = ()  # inputs to build besides those named in argv
    creates: tuple[str, ...] = ()  # what may appear (fnmatch patterns); plain names must appear on success
    removes: tuple[str, ...] = ()  # inputs that must be gone afterwards (stale temporaries)
    usage: bool = False  # a usage error: argparse's usage text and `blackholes CMD: error: ...` also do
    process: bool = False  # run as a real process
    env: dict = field(default_factory=dict)  # environment for the process
    timeout: float = 60
    check: Callable | None = None  # check(folder, stdout): the answer is the right one


def case(name: str, *argv, **kw):
    kw.setdefault("process", bool(kw.get("env")))
    return pytest.param(Case(tuple(map(str, argv)), **kw), id=name)


def inputs_of(c: Case) -> list[str]:
    """The inputs a case builds: those named (whole, or as a path component) in argv, and ``needs``."""
    named = [part for arg in c.argv for part in arg.split("/") if part in INPUTS]
    return list(dict.fromkeys(named + list(c.needs)))


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (relative path -> what it is), links not followed, FIFOs not opened."""
    return {Path(root, name).relative_to(folder).as_posix(): _fingerprint(Path(root, name))
            for root, dirs, files in os.walk(folder) for name in dirs + files}


def _fingerprint(path: Path) -> str:
    """A file's sha256 (a huge sparse one's size, blocks and mtime), a link's target, or its kind."""
    s = path.lstat()
    if stat.S_ISLNK(s.st_mode):
        return "link -> " + os.readlink(path)
    if stat.S_ISREG(s.st_mode) and s.st_size > 64 << 20:
        return f"{s.st_size} bytes, {s.st_blocks} blocks, mtime {s.st_mtime_ns}"
    if stat.S_ISREG(s.st_mode):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return "folder" if stat.S_ISDIR(s.st_mode) else "special"


def shown_lines(text: str) -> list[str]:
    """What a terminal shows of ``text``: each line as its last carriage return leaves it; blank ones dropped."""
    lines = (line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n"))
    return [line for line in lines if line]


def _memory_cap():  # a runaway allocation fails in the child, not on the shared machine
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


def run(c: Case, folder: Path, capsys, monkeypatch) -> tuple[int, str, str]:
    """Run one case in ``folder``: (exit status, stdout, stderr)."""
    env = {"HF_HUB_CACHE": str(folder / ".no-hf-cache"), "OLLAMA_MODELS": str(folder / ".no-ollama"), **c.env}
    if c.process:
        p = run_blackholes(*c.argv, env=env, timeout=c.timeout, cwd=folder, preexec_fn=_memory_cap)
        return p.returncode, p.stdout, p.stderr
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(folder)
    capsys.readouterr()
    with warnings.catch_warnings():  # --quiet silences warnings process-wide; keep that inside the case
        try:
            status = main(list(c.argv))
        except SystemExit as e:  # argparse: --help, or a usage error
            status = e.code
    out = capsys.readouterr()
    return status, out.out, out.err


def check_case(c: Case, folder: Path, capsys, monkeypatch) -> None:
    """Build the case's inputs, run it, and check its status, its words, and the folder afterwards."""
    for name in inputs_of(c):
        make(folder, name)
    before = snapshot(folder)
    status, out, err = run(c, folder, capsys, monkeypatch)
    after = snapshot(folder)
    assert_outcome(c, status, out, err)
    assert_folder(c, before, after, succeeded=status == 0)
    if c.check is not None:
        c.check(folder, out)


def assert_outcome(c: Case, status: int, out: str, err: str) -> None:
    """The exit status; for a refusal one clean line on stderr, for an answer its words (and --quiet quiet)."""
    assert "Traceback" not in out + err, err[-3000:]
    shown = shown_lines(err)
    if c.usage:  # argparse's usage text then its error line, or our one line: either is a clean refusal
        one_line = len(shown) == 1 and shown[0].startswith("blackholes: error: ")
        assert status == 2 and (one_line or shown[-1].startswith(f"blackholes {c.argv[0]}: error: ")), (status, err)
    elif c.status == 2:
        assert status == 2, (status, out[-2000:], err[-2000:])
        assert len(shown) == 1 and shown[0].startswith("blackholes: error: "), f"not one clean line: {err!r}"
        assert c.words is None or c.words in shown[0], shown[0]
    else:
        assert status == c.status, (status, err[-3000:])
        assert "--quiet" not in c.argv or err == "", f"--quiet, yet stderr: {err!r}"
        assert c.words is None or c.words in out, out[-3000:]


def assert_folder(c: Case, before: dict, after: dict, succeeded: bool) -> None:
    """Inputs byte-identical; nothing new but the expected outputs (all of them, on success); no temporaries."""
    changed = [name for name, digest in before.items() if name not in c.removes and after.get(name) != digest]
    assert not changed, f"inputs changed or removed: {changed}"
    assert not [name for name in c.removes if name in after], f"left in place: {c.removes}"
    new = sorted(set(after) - set(before))
    assert not [n for n in new if n.endswith(".tmp")], f"temporary files left: {new}"
    stray = [n for n in new if not any(fnmatch.fnmatchcase(n, pattern) for pattern in c.creates)]
    assert not stray, f"unexpected files: {stray}"
    if succeeded:
        missing = [p for p in c.creates if not any(ch in p for ch in "*?[") and p not in after]
        assert not missing, f"expected outputs not written: {missing}"


# ---------------------------------------------------------------------------- what a correct answer is


def exact_groups(x: np.ndarray) -> list[list[int]]:
    """Brute force: rows with equal bytes, groups of two or more, largest first, then by first row."""
    rows: dict[bytes, list[int]] = {}
    for i, row in enumerate(np.ascontiguousarray(x)):
        rows.setdefault(row.tobytes(), []).append(i)
    return sorted((ids for ids in rows.values() if len(ids) > 1), key=lambda g: (-len(g), g[0]))


def groups_are(matrix: Callable[[], np.ndarray], json_name: str | None = None):
    """The scan's JSON (a file, or stdout for ``--json -``) lists exactly the brute-force groups."""

    def check(folder, stdout):
        doc = json.loads(stdout if json_name is None else (folder / json_name).read_text())
        assert [g["token_ids"] for g in doc["groups"]] == exact_groups(matrix())

    return check


def ratios_are_exact(matrix: Callable[[], np.ndarray], json_name: str):
    """The map's explained-variance ratios agree with numpy's exact SVD of the centred matrix (1e-3)."""

    def check(folder, stdout):
        x = matrix().astype(np.float64)
        x = x * 2.0 ** -np.frexp(np.abs(x).max())[1]  # an exact power of two: no overflow or underflow
        s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
        exact = (s**2 / (s**2).sum())[:2]
        got = json.loads((folder / json_name).read_text())["without_mask"]["explained_variance_ratio"]
        assert np.allclose(got, exact, rtol=1e-3, atol=0), (got, exact)

    return check


def stdout_is_json(folder, stdout):
    json.loads(stdout)


def picks_key(json_name: str, key: str):
    def check(folder, stdout):
        assert json.loads((folder / json_name).read_text())["key"] == key

    return check


def complete_recording(name: str):
    def check(folder, stdout):
        meta = read_metadata(folder / name)
        assert meta["complete"] is True and meta["steps"][-1] == 3

    return check


def help_shows_no_raw_defaults(folder, stdout):
    for raw in ("(default: True)", "(default: False)", "(default: None)"):
        assert raw not in stdout, raw


def read_metadata(path: Path) -> dict:
    from blackholes.io.safetensors import read_header
    from blackholes.io.recording import decode_metadata

    return decode_metadata(read_header(path).metadata)


# ---------------------------------------------------------------------------- scan

SCAN = [
    case("missing file", "scan", "nope.safetensors", words="no such file"),
    case("folder without weights", "scan", "empty_dir", words="no safetensors weights"),
    case("empty file", "scan", "zero_bytes.safetensors", words="not a safetensors file"),
    case("text file", "scan", "text.safetensors", words="not a safetensors file"),
    case("truncated header", "scan", "trunc_header.safetensors", words="truncated"),
    case("corrupt JSON header", "scan", "corrupt.safetensors", words="corrupt JSON"),
    case("header a JSON list", "scan", "list_header.safetensors", words="not a JSON object"),
    case("header length 2**64-1", "scan", "huge_header.safetensors", words="not a safetensors file"),
    case("data cut short", "scan", "cut.safetensors", words="truncated safetensors file"),
    case("two candidate tensors", "scan", "two.safetensors", words="pick one with --key"),
    case("key not found", "scan", "two.safetensors", "--key", "c", words="not found"),
    case("empty key", "scan", "two.safetensors", "--key", "", words="not found"),
    case("3-D tensor by key", "scan", "3d.safetensors", "--key", "t", words="expected a 2-D"),
    case("zero rows", "scan", "no_rows.safetensors", words="is empty"),
    case("zero columns", "scan", "no_cols.safetensors", words="is empty"),
    case("unreadable dtype", "scan", "e8m0.safetensors", words="cannot read"),
    case("a shape of 2**62 rows", "scan", "absurd_shape.safetensors", words="truncated"),
    case("a negative shape", "scan", "negative_shape.safetensors", words="non-negative"),
    case("__metadata__ not an object", "scan", "bad_metadata.safetensors", words="__metadata__"),
    case("a link to itself", "scan", "self_link.safetensors"),
    case("FIFO as SOURCE", "scan", "fifo", words="FIFO", process=True, timeout=HANG),
    case("device as SOURCE", "scan", "/dev/zero", words="character device", process=True, timeout=HANG),
    case("empty SOURCE (an unset variable)", "scan", "", needs=(M,)),
    case("model id not cached", "scan", "someorg/not-cached", words="not in the local Hugging Face cache"),
    case("broken link in a folder (cut download)", "scan", "dangling", words="no such file"),
    case("shard missing", "scan", "shard_missing", words="no such file"),
    case("shard cut short", "scan", "shard_cut", words="truncated"),
    case("config.json corrupt", "scan", "bad_config", words="cannot read"),
    case("config.json a list", "scan", "list_config", words="not a JSON object"),
    case("GGUF cut short", "scan", "cut.gguf", words="GGUF"),
    case("GGUF with an absurd tensor count", "scan", "absurd.gguf", words="GGUF"),
    case("Ollama store missing", "scan", "ollama:llama3", words="Ollama"),
    case("server down", "scan", "http://127.0.0.1:9/model.safetensors", words="cannot reach", process=True,
         timeout=HANG),
    case("killed run's temporary", "scan", KILLED),
    case("--step of a plain matrix", "scan", M, "--step", "1", words="--step"),
    case("--step not recorded", "scan", "recording.safetensors", "--step", "99", words="not recorded"),
    case("--step negative", "scan", "recording.safetensors", "--step=-1", words="not recorded"),
    case("--top negative", "scan", M, "--top=-1", words="--top"),
    case("--near negative", "scan", M, "--near=-1", words="--near"),
    case("--near huge", "scan", M, "--near", 10**20, words="--near"),
    case("--percentile nan", "scan", M, "--indicators", "--percentile", "nan", words="--percentile"),
    case("--percentile 100", "scan", M, "--indicators", "--percentile", "100", words="--percentile"),
    case("--reference without --indicators", "scan", M, "--reference", "1", words="--indicators"),
    case("--reference beyond the rows", "scan", M, "--indicators", "--reference", "60-70", words="out of range"),
    case("--top not a number", "scan", M, "--top", "ten", usage=True),
    case("--matrix unknown", "scan", M, "--matrix", "middle", usage=True),
    case("--tokenizer missing", "scan", M, "--tokenizer", "nope.json", words="no tokenizer.json"),
    case("--tokenizer corrupt", "scan", M, "--tokenizer", "bad_tokenizer.json", words="cannot read tokenizer"),
    case("--tokenizer the model", "scan", M, "--tokenizer", M, words="cannot read tokenizer"),
    case("--tokenizer a FIFO", "scan", M, "--tokenizer", "fifo", process=True, timeout=HANG),
    # outputs that would destroy an input, or cannot be written
    case("--json onto the model", "scan", M, "--json", M, words="is an input"),
    case("--mask onto the model via ..", "scan", M, "--mask", f"empty_dir/../{M}", words="is an input"),
    case("--json a symlink to the model", "scan", M, "--json", "link_to_model.json", words="is an input"),
    case("--mask a hard link to the model", "scan", M, "--mask", "hardlink_to_model.safetensors",
         words="is an input"),
    case("--json onto the tokenizer", "scan", M, "--tokenizer", "tokenizer.json", "--json", "tokenizer.json",
         words="is an input"),
    case("--mask onto the folder's config", "scan", "model_dir", "--mask", "model_dir/config.json",
         words="is an input"),
    case("--json onto the folder's weights", "scan", "model_dir", "--matrix", "input", "--json",
         "model_dir/model.safetensors", words="is an input"),
    case("--mask and --json one file", "scan", M, "--mask", "out.x", "--json", "./out.x", words="two outputs"),
    case("--json a folder", "scan", M, "--json", "empty_dir", words="is a directory"),
    case("--json in a missing folder", "scan", M, "--json", "missing/out.json", words="does not exist"),
    case("--json inside a file", "scan", M, "--json", f"{M}/out.json", words="does not exist"),
    case("--json a FIFO", "scan", M, "--json", "fifo", words="not a regular file"),
    case("--report onto the model", "scan", M, "--report", M),
    case("--report: report.html links to the model", "scan", M, "--report", "report_trap", words="is an input"),
    case("--report into a new folder", "scan", M, "--report", "page", "--quiet", status=0,
         creates=("page", "page/*")),
    case("--json - is standard output", "scan", M, "--json", "-", "--quiet", status=0,
         check=groups_are(planted_matrix)),
    # answers that must be exactly right
    case("NaN payloads, signed zeros, infinities", "scan", "special.safetensors", "--json", "out.json", "--quiet",
         status=0, creates=("out.json",), check=groups_are(special_rows, "out.json")),
    case("BF16 bits", "scan", "bf16.safetensors", "--json", "out.json", "--quiet", status=0,
         creates=("out.json",), check=groups_are(bf16_bits, "out.json")),
    case("one row", "scan", "one_row.safetensors", "--json", "out.json", "--quiet", status=0,
         creates=("out.json",), check=groups_are(one_row, "out.json")),
    case("one column", "scan", "one_col.safetensors", "--json", "out.json", "--quiet", status=0,
         creates=("out.json",), check=groups_are(one_col, "out.json")),
    case("every row NaN", "scan", "all_nan.safetensors", "--json", "out.json", "--quiet", status=0,
         creates=("out.json",), check=groups_are(all_nan, "out.json")),
    case("recording: its embeddings, not logits", "scan", "recording.safetensors", "--json", "out.json",
         "--quiet", status=0, creates=("out.json",),
         check=groups_are(lambda: recording_tensors()["embeddings"][-1], "out.json")),
    case("recording --step 2", "scan", "recording.safetensors", "--step", "2", "--json", "out.json", "--quiet",
         status=0, creates=("out.json",), check=groups_are(lambda: recording_tensors()["embeddings"][2], "out.json")),
    case("tie_word_embeddings the string true", "scan", "tied_string", "--json", "out.json", "--quiet", status=0,
         creates=("out.json",), check=picks_key("out.json", "model.embed_tokens.weight")),
    case("--top beyond the groups", "scan", M, "--top", 10**30, status=0, words="2 tokens"),
    case("file name starting with a dash", "scan", "--", "-model.safetensors", status=0, words="4 tokens"),
    case("stale temporary is removed", "scan", M, "--json", "out.json", "--quiet", needs=(STALE_JSON,),
         removes=(STALE_JSON,), status=0, creates=("out.json",)),
    case("unicode name and tokens, ASCII terminal", "scan", "modèle 黑洞 (1).safetensors", status=0,
         words="4 tokens", env={"PYTHONIOENCODING": "ascii"}),
    case("non-UTF-8 file name, C locale", "scan", NON_UTF8, "--json", NON_UTF8_JSON, status=0, words="4 tokens",
         creates=(NON_UTF8_JSON,), env={"LC_ALL": "C", "PYTHONIOENCODING": "ascii"}),
]


@pytest.mark.parametrize("c", SCAN)
def test_scan(c, tmp_path, capsys, monkeypatch):
    check_case(c, tmp_path, capsys, monkeypatch)


FLOATS = {"BF16": (16, 8, 7), "F16": (16, 5, 10), "F32": (32, 8, 23), "F64": (64, 11, 52)}  # bits, exponent, mantissa


@st.composite
def hostile_bits(draw) -> tuple[np.ndarray, str]:
    """A small matrix of raw float bits: 0, -0, the smallest subnormal, infinities, NaNs of several
    payloads or any pattern at all, with rows repeated at random; and its dtype name."""
    name = draw(st.sampled_from(sorted(FLOATS)))
    width, exponent_bits, mantissa = FLOATS[name]
    inf = ((1 << exponent_bits) - 1) << mantissa
    special = [0, 1 << (width - 1), 1, inf, inf | 1, inf | (1 << (mantissa - 1)), (1 << width) - 1]
    value = st.one_of(st.sampled_from(special), st.integers(0, (1 << width) - 1))
    n, d = draw(st.integers(1, 12)), draw(st.integers(1, 4))
    rows: list[list[int]] = []
    for _ in range(n):
        again = rows and draw(st.booleans())
        rows.append(list(draw(st.sampled_from(rows))) if again else draw(st.lists(value, min_size=d, max_size=d)))
    return np.array(rows, dtype=np.dtype(f"<u{width // 8}")), name


@settings(max_examples=30, deadline=None)
@given(hostile_bits())
def test_scan_is_exact_on_hostile_bit_patterns(matrix):
    """Through `blackholes scan --json`, in every float dtype: exactly the brute-force groups."""
    from blackholes.io.safetensors import save_safetensors

    bits, name = matrix
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp, "m.safetensors"), Path(tmp, "out.json")
        save_safetensors(source, {"w": (bits, name)})
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            with warnings.catch_warnings():
                status = main(["scan", str(source), "--json", str(out), "--quiet"])
        assert status == 0 and err.getvalue() == "", err.getvalue()
        assert [g["token_ids"] for g in json.loads(out.read_text())["groups"]] == exact_groups(bits)


# ---------------------------------------------------------------------------- map

PNG = ("--out", "m.png")
MAP = [
    case("--out not a .png", "map", M, "--out", "m.jpg", words=".png"),
    case("--bins 1", "map", M, *PNG, "--bins", "1", words="--bins"),
    case("--bins a billion", "map", M, *PNG, "--bins", 10**9, words="--bins"),
    case("--bins not a number", "map", M, *PNG, "--bins", "many", usage=True),
    case("--mask with --auto-mask", "map", M, *PNG, "--mask", "mask.safetensors", "--auto-mask", usage=True),
    case("--out and --json one file", "map", M, *PNG, "--json", "m.png", words="two outputs"),
    case("--out a hard link to the model", "map", M, "--out", "model_hardlink.png", words="is an input"),
    case("--json onto the mask", "map", M, "--mask", "mask.safetensors", *PNG, "--json", "mask.safetensors",
         words="is an input"),
    case("--out a folder", "map", M, "--out", "folder.png", words="is a directory"),
    case("--out in a missing folder", "map", M, "--out", "missing/m.png", words="does not exist"),
    case("--mask missing", "map", M, "--mask", "nope.safetensors", *PNG, words="no such file"),
    case("--mask a FIFO", "map", M, "--mask", "fifo", *PNG, process=True, timeout=HANG),
    case("--mask a folder", "map", M, "--mask", "empty_dir", *PNG, words="directory"),
    case("--mask for another model", "map", M, "--mask", "mask_short.safetensors", *PNG, words="another model"),
    case("--mask the model itself", "map", M, "--mask", M, *PNG, words="no 'mask'"),
    case("--mask negative black_hole_id", "map", M, "--mask", "mask_negative_id.safetensors", *PNG, words="outside"),
    case("--mask huge black_hole_id", "map", M, "--mask", "mask_huge_id.safetensors", *PNG, words="outside"),
    case("--mask black_hole_id disagrees", "map", M, "--mask", "mask_disagrees.safetensors", *PNG,
         words="disagrees"),
    case("--mask float black_hole_id", "map", M, "--mask", "mask_float_id.safetensors", *PNG, words="integers"),
    case("--mask of every row", "map", M, "--mask", "mask_all.safetensors", *PNG, words="nothing to map"),
    case("one row", "map", "one_row.safetensors", *PNG, words="at least 2 rows"),
    case("one column", "map", "one_col.safetensors", *PNG, words="2 columns"),
    case("zero rows", "map", "no_rows.safetensors", *PNG, words="is empty"),
    case("every row NaN", "map", "all_nan.safetensors", *PNG, words="NaN"),
    case("an infinite value", "map", "special.safetensors", *PNG, "--quiet", words="infinite"),
    case("unit scale (control)", "map", "unit.safetensors", *PNG, "--json", "m.json", "--quiet", status=0,
         creates=("m.png", "m.json"), check=ratios_are_exact(lambda: spread_matrix().astype(np.float32), "m.json")),
    case("values near the F32 maximum", "map", "f32_max.safetensors", *PNG, "--json", "m.json", "--quiet",
         status=0, creates=("m.png", "m.json"), check=ratios_are_exact(f32_max, "m.json")),
    case("F64 values near 1e-300", "map", "f64_tiny.safetensors", *PNG, "--json", "m.json", "--quiet", status=0,
         creates=("m.png", "m.json"), check=ratios_are_exact(f64_tiny, "m.json")),
    case("an offset 10,000x the spread", "map", "offset.safetensors", *PNG, "--json", "m.json", "--quiet",
         status=0, creates=("m.png", "m.json"), check=ratios_are_exact(offset_matrix, "m.json")),
    case("title with matplotlib math", "map", M, *PNG, "--title", "$\\frac{a}{$ 50% \\", "--quiet", status=0,
         creates=("m.png",)),
    case("$...$ in the file name", "map", "$\\alpha_{x}$.safetensors", *PNG, "--quiet", status=0,
         creates=("m.png",)),
    case("unicode name, ASCII terminal", "map", "modèle 黑洞 (1).safetensors", *PNG, "--title", "黑洞 ½", status=0,
         words="Map written", creates=("m.png",), env={"PYTHONIOENCODING": "ascii"}),
    case("--auto-mask", "map", M, "--auto-mask", *PNG, status=0, words="6 black-hole tokens masked",
         creates=("m.png",)),
    case("--json - is standard output", "map", M, *PNG, "--json", "-", "--quiet", status=0, creates=("m.png",),
         check=stdout_is_json),
]


@pytest.mark.parametrize("c", MAP)
def test_map(c, tmp_path, capsys, monkeypatch):
    check_case(c, tmp_path, capsys, monkeypatch)


# ---------------------------------------------------------------------------- dynamics

R = "recording.safetensors"
DYNAMICS = [
    case("missing", "dynamics", "nope.safetensors", words="no such file"),
    case("a plain matrix", "dynamics", M, words="not a training recording"),
    case("a folder", "dynamics", "empty_dir", words="directory"),
    case("a FIFO", "dynamics", "fifo", process=True, timeout=HANG),
    case("empty file", "dynamics", "zero_bytes.safetensors", words="not a safetensors file"),
    case("one recorded step", "dynamics", "rec_one_step.safetensors", words="too small"),
    case("logits of another vocabulary", "dynamics", "rec_bad_logits.safetensors", words="shapes disagree"),
    case("a step number of 2**63", "dynamics", "rec_step_2_63.safetensors", words="'steps'"),
    case("steps going back", "dynamics", "rec_steps_back.safetensors", words="increase"),
    case("never_seen outside the vocabulary", "dynamics", "rec_never_outside.safetensors", words="outside"),
    case("never_seen a huge id", "dynamics", "rec_never_huge.safetensors", words="outside"),
    case("one never_seen token", "dynamics", "rec_never_one.safetensors", words="only one"),
    case("no never_seen and no --corpus", "dynamics", "rec_no_never_seen.safetensors", words="never_seen"),
    case("killed run's temporary", "dynamics", KILLED),
    case("--corpus empty", "dynamics", R, "--corpus", "empty.txt", words="empty"),
    case("--corpus bytes beyond the vocabulary", "dynamics", R, "--corpus", "corpus.txt", words="outside"),
    case("--corpus missing", "dynamics", R, "--corpus", "nope.txt", words="no such"),
    case("--corpus a folder", "dynamics", R, "--corpus", "empty_dir", words="directory"),
    case("--corpus a FIFO", "dynamics", R, "--corpus", "fifo", words="FIFO", process=True, timeout=HANG),
    case("--corpus a device", "dynamics", R, "--corpus", "/dev/zero", words="character device", process=True,
         timeout=HANG),
    case("--corpus of 1 TB", "dynamics", R, "--corpus", "sparse_1tb.bin", process=True, timeout=HANG),
    case("--corpus the recording itself", "dynamics", R, "--corpus", R, words="outside"),
    case("--tokens beyond the vocabulary", "dynamics", R, "--tokens", "3,99", words="outside"),
    case("--tokens 0-10**20", "dynamics", R, "--tokens", f"0-{10**20}", words="outside"),
    case("--tokens empty", "dynamics", R, "--tokens", "", words="empty"),
    case("--tokens backwards", "dynamics", R, "--tokens", "6-3", words="end before start"),
    case("--tokens negative", "dynamics", R, "--tokens=-1", words="bad token id list"),
    case("--tokens one id twice", "dynamics", R, "--tokens", "3,3", words="only one"),
    case("--steps 0-10**20", "dynamics", R, "--steps", f"0-{10**20}", words="beyond"),
    case("--steps not numbers", "dynamics", R, "--steps", "a,b", words="bad step list"),
    case("--corpus with --tokens", "dynamics", R, "--corpus", "vocab16.bin", "--tokens", "3-6", usage=True),
    case("--json onto the recording", "dynamics", R, "--json", R, words="is an input"),
    case("--json onto the corpus", "dynamics", R, "--corpus", "vocab16.bin", "--json", "vocab16.bin",
         words="is an input"),
    case("--json a hard link to the recording", "dynamics", R, "--json", "recording_hardlink.safetensors",
         words="is an input"),
    case("--json in a missing folder", "dynamics", R, "--json", "missing/d.json", words="does not exist"),
    case("--plots onto the recording", "dynamics", R, "--plots", R, words="directory"),
    case("--plots: a plot's name links to the recording", "dynamics", R, "--plots", "plots_trap",
         words="is an input"),
    case("--plots: the recording has a plot's name", "dynamics", "plots_holding_rec/dynamics_speed.png",
         "--plots", "plots_holding_rec", words="is an input"),
    case("--census --plots: census.png links to the recording", "dynamics", R, "--census", "--plots",
         "census_trap", words="is an input"),
    case("--json onto a plot", "dynamics", R, "--plots", "empty_dir", "--json", "empty_dir/dynamics_logits.png",
         words="two outputs"),
    case("a diverged run (NaN positions)", "dynamics", "rec_nan.safetensors", status=0, words="not finite"),
    case("a diverged run, --quiet: no warnings", "dynamics", "rec_nan.safetensors", "--json", "d.json", "--quiet",
         status=0, creates=("d.json",)),
    case("--plots into a new folder", "dynamics", R, "--plots", "new/plots", "--quiet", status=0,
         creates=("new", "new/plots", "new/plots/dynamics_*.png")),
    case("--json - is standard output", "dynamics", R, "--json", "-", "--quiet", status=0, check=stdout_is_json),
    case("unicode name, ASCII terminal", "dynamics", "enregistrement 黑洞.safetensors", status=0,
         words="IDENTICAL", env={"PYTHONIOENCODING": "ascii"}),
]


@pytest.mark.parametrize("c", DYNAMICS)
def test_dynamics(c, tmp_path, capsys, monkeypatch):
    check_case(c, tmp_path, capsys, monkeypatch)


# ---------------------------------------------------------------------------- train

SMALL = ("--no-compile", "--steps", "3", "--width", "8", "--context", "8", "--layers", "1", "--heads", "1", "--quiet")
RUN = ("train", "--corpus", "corpus.txt", "--out", "run.safetensors", *SMALL)  # later options override SMALL's
BIG = {"process": True, "timeout": HANG}  # sizes: a real process, under a memory cap
TRAIN = [
    case("--out is the corpus", "train", "--corpus", "corpus.txt", "--out", "corpus.txt", *SMALL, words="corpus"),
    case("--out reaches the corpus via ..", "train", "--corpus", "corpus.txt", "--out", "empty_dir/../corpus.txt",
         *SMALL, words="corpus"),
    case("--out a hard link to the corpus", "train", "--corpus", "corpus.txt", "--out", "corpus_hardlink.txt",
         *SMALL, words="corpus"),
    case("--out a symlink to the corpus", "train", "--corpus", "corpus.txt", "--out", "corpus_symlink.txt",
         *SMALL, words="corpus"),
    case("--out a folder", "train", "--corpus", "corpus.txt", "--out", "empty_dir", *SMALL, words="directory"),
    case("--out a FIFO", "train", "--corpus", "corpus.txt", "--out", "fifo", *SMALL, words="not a regular file"),
    case("--corpus a FIFO", "train", "--corpus", "fifo", "--out", "run.safetensors", *SMALL, words="FIFO", **BIG),
    case("--corpus a device", "train", "--corpus", "/dev/zero", "--out", "run.safetensors", *SMALL,
         words="character device", **BIG),
    case("--corpus of 1 TB", "train", "--corpus", "sparse_1tb.bin", "--out", "run.safetensors", *SMALL,
         "--vocab", "256", words="limit", **BIG),
    case("unicode corpus name, ASCII terminal", "train", "--corpus", "corpus 黑洞.txt", "--out", "run.safetensors",
         *SMALL, words="no such", env={"PYTHONIOENCODING": "ascii"}),
    case("--corpus a folder", "train", "--corpus", "empty_dir", "--out", "run.safetensors", *SMALL,
         words="directory"),
    case("--corpus empty", "train", "--corpus", "empty.txt", "--out", "run.safetensors", *SMALL, words="0 bytes"),
    case("--corpus missing", "train", "--corpus", "nope.txt", "--out", "run.safetensors", *SMALL, words="no such"),
    case("--corpus bytes beyond --vocab", "train", "--corpus", "binary.bin", "--out", "run.safetensors", *SMALL,
         words="outside the vocabulary"),
    case("--steps 0", *RUN, "--steps", "0", words="--steps"),
    case("--steps negative", *RUN, "--steps=-5", words="--steps"),
    case("--steps 10**12", *RUN, "--steps", 10**12, **BIG),
    case("--steps 10**12, two records", *RUN, "--steps", 10**12, "--every", 10**12, "--no-optimizer-state", **BIG),
    case("--batch 10**12", *RUN, "--batch", 10**12, **BIG),
    case("--width 10**12", *RUN, "--width", 10**12, **BIG),
    case("--context 10**12", *RUN, "--context", 10**12, **BIG),
    case("--layers 10**9", *RUN, "--layers", 10**9, **BIG),
    case("--mlp-ratio 10**12", *RUN, "--mlp-ratio", 10**12, **BIG),
    case("--threads 100000", *RUN, "--threads", 100000, words="--threads", **BIG),
    case("--threads negative", *RUN, "--threads=-1", words="--threads"),
    case("--vocab 257", *RUN, "--vocab", "257", words="--vocab"),
    case("--vocab 0", *RUN, "--vocab", "0", words="--vocab"),
    case("--heads not dividing --width", *RUN, "--heads", "3", words="divisible"),
    case("--lr nan", *RUN, "--lr", "nan", words="--lr"),
    case("--lr inf", *RUN, "--lr", "inf", words="--lr"),
    case("--sigma nan", *RUN, "--sigma", "nan", words="--sigma"),
    case("--sigma negative", *RUN, "--sigma=-1", words="--sigma"),
    case("--seed negative", *RUN, "--seed=-1", words="--seed"),
    case("--seed 2**64", *RUN, "--seed", 2**64, words="--seed"),
    case("--every 0", *RUN, "--every", "0", words="--every"),
    case("--beta1 1", *RUN, "--beta1", "1", words="--beta1"),
    case("--eps 0", *RUN, "--eps", "0", words="--eps"),
    case("--clip nan", *RUN, "--clip", "nan", words="--clip"),
    case("--weight-decay nan", *RUN, "--weight-decay", "nan", words="--weight-decay"),
    case("--init normal with --sigma 0", *RUN, "--init", "normal", words="--sigma"),
    case("--steps 1e3", *RUN, "--steps", "1e3", usage=True),
    case("--precision fp16", *RUN, "--precision", "fp16", usage=True),
    case("--out missing", "train", "--corpus", "corpus.txt", *SMALL, usage=True),
    case("--help shows real defaults", "train", "--help", status=0, check=help_shows_no_raw_defaults),
    case("a tiny run", *RUN, status=0, creates=("run.safetensors",), check=complete_recording("run.safetensors")),
    case("a tiny run removes a killed run's temporary", *RUN, status=0, needs=(KILLED,), removes=(KILLED,),
         creates=("run.safetensors",), check=complete_recording("run.safetensors")),
]


@pytest.mark.parametrize("c", TRAIN)
def test_train(c, tmp_path, capsys, monkeypatch):
    check_case(c, tmp_path, capsys, monkeypatch)


# ---------------------------------------------------------------------------- reproduce

NEW = ("reproduce", "--out", "new_run", "--quiet")
REPRODUCE = [
    case("--out a file", "reproduce", "--out", "corpus.txt", words="folder"),
    case("--out not empty", "reproduce", "--out", "notes_dir", words="--force"),
    case("--force: the corpus is the earlier recording", "reproduce", "--out", "earlier_run", "--force",
         "--corpus", "earlier_run/recording.safetensors", words="input"),
    case("--force: the corpus is an earlier plot", "reproduce", "--out", "earlier_run", "--force", "--corpus",
         "earlier_run/plots/map_final.png", words="input"),
    case("--force: report.html a hard link to the corpus", "reproduce", "--out", "run_linked", "--force",
         "--corpus", "corpus.txt", words="input"),
    case("--steps 0", *NEW, "--steps", "0", words="--steps"),
    case("--steps 10**12", *NEW, "--steps", 10**12, **BIG),
    case("--sigma nan", *NEW, "--sigma", "nan", words="--sigma"),
    case("--vocab 1000", *NEW, "--vocab", "1000", words="--vocab"),
    case("--seed negative", *NEW, "--seed=-1", words="--seed"),
    case("--corpus missing", *NEW, "--corpus", "nope.txt", words="no such"),
    case("--corpus a folder", *NEW, "--corpus", "empty_dir", words="directory"),
    case("--corpus a FIFO", *NEW, "--corpus", "fifo", words="FIFO", **BIG),
    case("--corpus a device", *NEW, "--corpus", "/dev/zero", words="character device", **BIG),
    case("--corpus of 1 TB", *NEW, "--corpus", "sparse_1tb.bin", "--vocab", "256", words="limit", **BIG),
    case("--corpus empty", *NEW, "--corpus", "empty.txt", words="0 bytes"),
    case("--corpus bytes beyond --vocab", *NEW, "--corpus", "binary.bin", words="outside the vocabulary"),
    case("--out deep in missing folders", "reproduce", "--out", "a/b/c", "--steps", "0", words="--steps"),
    case("--dtype fp16", *NEW, "--dtype", "fp16", usage=True),
]


@pytest.mark.parametrize("c", REPRODUCE)
def test_reproduce(c, tmp_path, capsys, monkeypatch):
    check_case(c, tmp_path, capsys, monkeypatch)


# ---------------------------------------------------------------------------- signals: a real training process

LONG = ("--no-compile", "--steps", "1000000", "--width", "8", "--context", "8", "--layers", "1", "--heads", "1",
        "--every", "10", "--quiet")


def start_training(folder: Path) -> subprocess.Popen:
    """`blackholes train` for far longer than the test lasts; returns once it is writing its recording."""
    make(folder, "corpus.txt")
    p = subprocess.Popen([sys.executable, "-m", "blackholes", "train", "--corpus", "corpus.txt", "--out",
                          "run.safetensors", *LONG], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.monotonic() + 60
    while not list(folder.glob(".run.safetensors.*.tmp")):
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            pytest.fail(f"training did not start: {p.communicate()}")
        time.sleep(0.05)
    time.sleep(1.0)  # some hundreds of steps
    return p


def assert_valid_partial_recording(path: Path) -> None:
    """Complete: false, one `steps` entry per record, every tensor cut to the records, nothing after them."""
    from blackholes.analysis.dynamics import analyze
    from blackholes.io.safetensors import read_header

    header = read_header(path)
    meta = read_metadata(path)
    records = header.tensors["embeddings"].shape[0]
    assert meta["complete"] is False and isinstance(meta["interrupted_at_step"], int), meta
    assert len(meta["steps"]) == records and meta["steps"][-1] <= meta["interrupted_at_step"]
    assert all(t.shape[:1] == (records,) for t in header.tensors.values())
    assert path.stat().st_size == max(t.end for t in header.tensors.values())
    if records >= 2:
        assert any("incomplete" in note for note in analyze(path).notes)


@pytest.mark.parametrize("signals", [("SIGTERM",), ("SIGHUP",), ("SIGTERM", "SIGTERM")],
                         ids=["SIGTERM", "SIGHUP", "SIGTERM twice"])
def test_train_stopped_by_signal_keeps_a_valid_recording(signals, tmp_path):
    p = start_training(tmp_path)
    for name in signals:
        p.send_signal(getattr(signal, name))
        time.sleep(0.05)
    try:
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    number = getattr(signal, signals[0])
    assert p.returncode in (128 + number, -number), (p.returncode, err)  # exit 128+N, or re-raised: killed by N
    assert "Traceback" not in err and len(shown_lines(err)) == 1 and err.startswith("blackholes: "), err
    assert sorted(os.listdir(tmp_path)) in (["corpus.txt"], ["corpus.txt", "run.safetensors"]), os.listdir(tmp_path)
    if (tmp_path / "run.safetensors").exists():
        assert_valid_partial_recording(tmp_path / "run.safetensors")


def test_killed_training_leaves_an_unfinished_temporary_that_the_next_run_removes(tmp_path, capsys, monkeypatch):
    p = start_training(tmp_path)
    p.kill()
    p.communicate(timeout=60)
    (left,) = tmp_path.glob(".run.safetensors.*.tmp")  # SIGKILL cannot be caught: the temporary stays
    meta = read_metadata(left)
    # neither complete nor interrupted: the KILLED input of the tables above is built the same way
    assert meta["complete"] is False and "interrupted_at_step" not in meta, meta
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        assert main(list(RUN)) == 0, capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["corpus.txt", "run.safetensors"]
    assert read_metadata(tmp_path / "run.safetensors")["complete"] is True


# ============================================================================ issue 18: the newer surfaces
# GGUF files and their shards, Ollama stores, --cache entries, remote sources behind a hostile server on
# 127.0.0.1, untrusted JSON everywhere, values (not block bytes) for map / indicators / near, and refusals
# that are one line before anything else. Same checker, same rules as every table above.

import importlib.util  # noqa: E402  (the block's own imports, kept with it)

import gguf  # noqa: E402

Q8 = gguf.GGMLQuantizationType.Q8_0


def q8_values() -> np.ndarray:
    """64 x 64 float32 rows with planted groups, as Q8_0 stores and dequantises them (the values map must see)."""
    return gguf.quants.dequantize(gguf.quants.quantize(planted(n=64, d=64, sizes=(4, 2), seed=11), Q8), Q8)


def q8_blocks() -> np.ndarray:
    return gguf.quants.quantize(planted(n=64, d=64, sizes=(4, 2), seed=11), Q8)


def split_output() -> np.ndarray:
    return planted(n=24, d=32, sizes=(3, 2), seed=12).astype(np.float16)


def gguf_model(path: Path, tensors: dict, kv=(), *, vocab: bool = True, split: int = 0) -> None:
    """A GGUF file (``split``: one tensor a part) with ``tensors`` (name -> (stored array, raw type or None))
    and metadata ``kv`` ((GGUFWriter method, key, value), ...)."""
    w = gguf.GGUFWriter(path, "llama", split_max_tensors=split)
    if vocab:
        w.add_tokenizer_model("gpt2")
        w.add_token_list([f"t{i}" for i in range(24)])
    for method, key, value in kv:
        getattr(w, method)(key, value)
    for name, (data, raw) in tensors.items():
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def nested(depth: int):
    value = [1]
    for _ in range(depth - 1):
        value = [value]
    return value


EMB24 = np.ones((24, 32), np.float32)


@builds("sp-00001-of-00003.gguf", "sp-00002-of-00003.gguf", "sp-00003-of-00003.gguf")
def _split(path):
    gguf_model(path.parent / "sp.gguf", {"token_embd.weight": (EMB24, None), "blk.0.w": (EMB24, None),
                                         "output.weight": (split_output(), None)}, split=1)


@builds("sp-00004-of-00003.gguf", "sp-00001-of-00000.gguf", "sp-00000-of-00003.gguf", "lone-00002-of-00002.gguf")
def _impossible_split(path):
    path.write_bytes(make(path.parent, "sp-00001-of-00003.gguf").read_bytes())


@builds("twice-00001-of-00003.gguf", "twice-00002-of-00003.gguf", "twice-00003-of-00003.gguf")
def _twice(path):
    """A split whose third part comes from another split: output.weight in parts 2 and 3."""
    folder = path.parent
    with tempfile.TemporaryDirectory(dir=folder) as other:
        gguf_model(Path(other) / "x.gguf", {"token_embd.weight": (EMB24, None), "blk.0.w": (EMB24, None),
                                            "output.weight": (EMB24, None)}, split=1)
        gguf_model(folder / "twice.gguf", {"token_embd.weight": (EMB24, None), "output.weight": (EMB24, None),
                                           "blk.0.w": (EMB24, None)}, split=1)
        (folder / "twice-00003-of-00003.gguf").write_bytes((Path(other) / "x-00003-of-00003.gguf").read_bytes())


INPUTS.update({
    "q8.gguf": lambda p: gguf_model(p, {"token_embd.weight": (q8_blocks(), Q8)}, vocab=False),
    "q8_values.safetensors": lambda p: tensors(p, w=q8_values()),
    "nan_types.gguf": lambda p: gguf_model(p, {"token_embd.weight": (EMB24, None)},
                                           [("add_array", "tokenizer.ggml.token_type", [float("nan")] * 24)]),
    "text_types.gguf": lambda p: gguf_model(p, {"token_embd.weight": (EMB24, None)},
                                            [("add_array", "tokenizer.ggml.token_type", ["normal"] * 24)]),
    "int_tokens.gguf": lambda p: gguf_model(p, {"token_embd.weight": (EMB24, None)},
                                            [("add_array", "tokenizer.ggml.tokens", list(range(24)))], vocab=False),
    "int_model.gguf": lambda p: gguf_model(p, {"token_embd.weight": (EMB24, None)},
                                           [("add_uint32", "tokenizer.ggml.model", 7),
                                            ("add_array", "tokenizer.ggml.tokens", ["a"] * 24)], vocab=False),
    "text_split_count.gguf": lambda p: gguf_model(p, {"token_embd.weight": (EMB24, None)},
                                                  [("add_string", "split.count", "two")]),
    "text_alignment.gguf": lambda p: gguf_model(p, {"token_embd.weight": (EMB24, None)},
                                                [("add_string", "general.alignment", "32")]),
    "deep_array.gguf": lambda p: gguf_model(p, {"token_embd.weight": (EMB24, None)},
                                            [("add_array", "general.deep", nested(40))]),
    "deep_header.safetensors": lambda p: header_file(p, b'{"w": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    "long_int_header.safetensors": lambda p: header_file(
        p, b'{"w": {"dtype": "F32", "shape": [1' + b"0" * 5000 + b', 4], "data_offsets": [0, 16]}}',
        data=b"\0" * 16),
    "deep_config": lambda p: model_folder(p, "[" * 20000 + "]" * 20000, **untied()),
    "long_int_config": lambda p: model_folder(p, '{"tie_word_embeddings": 1' + "0" * 5000 + "}", **untied()),
    "rec_deep_steps.safetensors": lambda p: recording(p, {"steps": "[" * 5000 + "]" * 5000}),
    "rec_deep_never_seen.safetensors": lambda p: recording(p, {"never_seen": "[" * 5000 + "]" * 5000}),
    "nan_rows.safetensors": lambda p: tensors(p, w=np.where(np.arange(300)[:, None] % 97 == 0, np.nan,
                                                            spread_matrix()).astype(np.float32)),
    "inf_rows.safetensors": lambda p: tensors(p, w=np.where(np.arange(300)[:, None] % 89 == 0, np.inf,
                                                            spread_matrix()).astype(np.float32)),
})


@builds("indexed", "deep_index", "absolute_index", "escaping_index")
def _indexes(path):
    path.mkdir()
    tensors(path / "model-00001-of-00001.safetensors", **untied())
    (path / "config.json").write_text('{"tie_word_embeddings": false}')
    shard = {"indexed": "model-00001-of-00001.safetensors", "deep_index": None, "absolute_index": "/etc/hostname",
             "escaping_index": "../model.safetensors"}[path.name]
    index = ("[" * 20000 + "]" * 20000 if shard is None else
             json.dumps({"weight_map": {k: shard for k in untied()}}))
    (path / "model.safetensors.index.json").write_text(index)


@builds("folder_with_tokenizer")
def _folder_with_tokenizer(path):
    model_folder(path, '{"tie_word_embeddings": false}', **untied())
    (path / "tokenizer.json").write_bytes(make(path.parent, "tokenizer.json").read_bytes())


def ollama_store(path: Path, manifest: bytes | None = None) -> None:
    """An Ollama store at ``path`` with one model, ``ollama:tiny`` (manifest, config blob, GGUF blob)."""
    blobs, manifests = path / "blobs", path / "manifests" / "registry.ollama.ai" / "library" / "tiny"
    blobs.mkdir(parents=True)
    manifests.mkdir(parents=True)
    gguf_model(blobs / "model.gguf", {"token_embd.weight": (q8_blocks(), Q8)}, vocab=False)
    data = (blobs / "model.gguf").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (blobs / "model.gguf").rename(blobs / f"sha256-{digest}")
    layers = [{"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": len(data)}]
    (manifests / "latest").write_bytes(manifest or json.dumps({"schemaVersion": 2, "layers": layers}).encode())


MANIFEST = "store/manifests/registry.ollama.ai/library/tiny/latest"
INPUTS.update({
    "store": ollama_store,
    "deep_store": lambda p: ollama_store(p, b"[" * 20000 + b"]" * 20000),
})
OLLAMA = {"OLLAMA_MODELS": "store"}
DEEP_OLLAMA = {"OLLAMA_MODELS": "deep_store"}


def blob_name(folder: Path) -> str:
    return next(p.name for p in (folder / "store" / "blobs").iterdir())


def same_map(other_json: str, json_name: str):
    """A map JSON equal to another map's (same rows, same values): all but where the rows came from."""

    def check(folder, stdout):
        ignore = ("source", "key", "dtype", "seconds")
        a, b = (json.loads((folder / n).read_text()) for n in (json_name, other_json))
        assert {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}

    return check


def map_of_values_first(folder: Path) -> None:
    """The map of the dequantised values, written first, as the oracle of the map of the Q8_0 blocks."""
    with warnings.catch_warnings():
        assert main(["map", str(folder / "q8_values.safetensors"), "--out", str(folder / "v.png"), "--json",
                     str(folder / "v.json"), "--quiet"]) == 0


def same_candidates(folder, stdout):
    """scan --indicators of the Q8_0 file names the candidates the dequantised F32 copy gives."""
    with warnings.catch_warnings():
        assert main(["scan", str(folder / "q8_values.safetensors"), "--indicators", "--json",
                     str(folder / "v.json"), "--quiet"]) == 0
    got, want = (json.loads((folder / n).read_text()) for n in ("out.json", "v.json"))
    assert got["indicators"]["candidates"] == want["indicators"]["candidates"]


HOSTILE_18 = [
    # 1. untrusted JSON, bounded: nesting, integers of thousands of digits
    case("safetensors header nested 5,000 deep", "scan", "deep_header.safetensors", words="nested deeper"),
    case("safetensors shape of 5,000 digits", "scan", "long_int_header.safetensors", words="digits"),
    case("config.json nested 20,000 deep", "scan", "deep_config", words="nested deeper"),
    case("config.json integer of 5,000 digits", "scan", "long_int_config", words="digits"),
    case("index nested 20,000 deep", "scan", "deep_index", words="nested deeper"),
    case("Ollama manifest nested 20,000 deep", "scan", "ollama:tiny", words="nested deeper", needs=("deep_store",),
         env=DEEP_OLLAMA, process=False),
    case("GGUF arrays of arrays 40 deep", "scan", "deep_array.gguf", words="nests arrays"),
    case("recording: steps nested 5,000 deep", "scan", "rec_deep_steps.safetensors", words="steps"),
    case("recording: never_seen nested 5,000 deep", "dynamics", "rec_deep_never_seen.safetensors", "--quiet",
         words="never_seen"),
    # 2. an output onto a file the source reads, though not typed on the command line
    case("--json onto another part of a split GGUF", "scan", "sp-00001-of-00003.gguf", "--json",
         "sp-00002-of-00003.gguf", words="is an input"),
    case("--mask onto the first part, scanning the third", "scan", "sp-00003-of-00003.gguf", "--matrix", "input",
         "--mask", "sp-00001-of-00003.gguf", words="is an input"),
    case("map --json onto another part", "map", "sp-00002-of-00003.gguf", *PNG, "--json", "sp-00003-of-00003.gguf",
         words="is an input"),
    case("--json onto the Ollama manifest", "scan", "ollama:tiny", "--json", MANIFEST, words="is an input",
         needs=("store",), env=OLLAMA, process=False),
    case("--mask onto the Ollama manifest via ..", "scan", "ollama:tiny", "--mask",
         "store/blobs/../manifests/registry.ollama.ai/library/tiny/latest", words="is an input", needs=("store",),
         env=OLLAMA, process=False),
    case("--json onto the tokenizer beside the model", "scan", "folder_with_tokenizer", "--json",
         "folder_with_tokenizer/tokenizer.json", words="is an input"),
    case("--json onto the index", "scan", "indexed", "--json", "indexed/model.safetensors.index.json",
         words="is an input"),
    # 3. split names, counts and duplicates
    case("part 4 of 3", "scan", "sp-00004-of-00003.gguf", words="part 4 of 3"),
    case("part 1 of 0", "scan", "sp-00001-of-00000.gguf", words="part 1 of 0"),
    case("part 0 of 3", "scan", "sp-00000-of-00003.gguf", words="part 0 of 3"),
    case("a part missing", "scan", "lone-00002-of-00002.gguf", words="missing part"),
    case("a tensor in two parts", "scan", "twice-00001-of-00003.gguf", words="in two parts"),
    case("a split GGUF scanned from its second part", "scan", "sp-00002-of-00003.gguf", "--json", "out.json",
         "--quiet", status=0, creates=("out.json",), check=groups_are(split_output, "out.json")),
    # 4. values, not bytes
    case("map of Q8_0 blocks maps their values", "map", "q8.gguf", *PNG, "--json", "m.json", "--quiet", status=0,
         needs=("q8_values.safetensors",), creates=("m.png", "m.json"), check=same_map("v.json", "m.json")),
    case("--indicators of Q8_0 blocks reads their values", "scan", "q8.gguf", "--indicators", "--json", "out.json",
         "--quiet", status=0, needs=("q8_values.safetensors",), creates=("out.json",), check=same_candidates),
    case("--near of Q8_0 blocks: skipped, said so", "scan", "q8.gguf", "--near", status=0, words="--near skipped"),
    case("the Q8_0 groups are of the stored blocks", "scan", "q8.gguf", "--json", "out.json", "--quiet", status=0,
         creates=("out.json",), check=groups_are(q8_blocks, "out.json")),
    # 5. GGUF metadata of unexpected types
    case("token types: floats holding NaN", "scan", "nan_types.gguf", words="token_type"),
    case("token types: strings", "scan", "text_types.gguf", words="token_type"),
    case("tokens: integers", "scan", "int_tokens.gguf", words="tokenizer.ggml.tokens"),
    case("tokenizer model: an integer", "scan", "int_model.gguf", words="tokenizer.ggml.model"),
    case("split.count: a string", "scan", "text_split_count.gguf", words="split.count"),
    case("general.alignment: a string", "scan", "text_alignment.gguf", words="general.alignment"),
    # 6. remote (no server needed): malformed URLs
    case("URL with a broken IPv6 host", "scan", "http://[::1/model.safetensors", words="not a URL"),
    case("URL with a space in its host", "scan", "http://a b/model.safetensors", words="not a URL"),
    case("URL with no host", "scan", "http:///model.safetensors", words="no host"),
    case("URL with a port out of range", "scan", "http://127.0.0.1:99999/m.safetensors", words="not a URL"),
    # index entries outside the model's folder (a local folder too)
    case("index naming an absolute path", "scan", "absolute_index", words="not a file of the model"),
    case("index naming ../", "scan", "escaping_index", words="not a file of the model"),
    # 9. one line before anything else
    case("--near before SOURCE", "scan", "--near", M, "--json", "out.json", "--quiet", status=0,
         creates=("out.json",), check=groups_are(planted_matrix, "out.json")),
    case("--near K before SOURCE", "scan", "--near", "3", M, "--quiet", status=0),
    # (run with RuntimeWarnings as errors: one printed before the refusal would end in another line)
    case("map: NaN rows among finite ones, no warnings", "map", "nan_rows.safetensors", *PNG, words="NaN"),
    case("map: infinite rows among finite ones, no warnings", "map", "inf_rows.safetensors", *PNG,
         words="infinite"),
    case("--indicators: NaN rows among finite ones, no warnings", "scan", "nan_rows.safetensors", "--indicators",
         words="NaN"),
]


@pytest.mark.parametrize("c", HOSTILE_18)
def test_hostile_18(c, tmp_path, capsys, monkeypatch):
    if c.argv[0] == "map" and "q8_values.safetensors" in c.needs:
        make(tmp_path, "q8_values.safetensors")
        map_of_values_first(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's warnings are not a line of their own
        check_case(c, tmp_path, capsys, monkeypatch)


# -- issue 18: remote sources behind a hostile server on 127.0.0.1 -------------------------------------------------

_spec = importlib.util.spec_from_file_location("http_server", Path(__file__).parents[1] / "sources" / "http_server.py")
hs = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("http_server", hs)
_spec.loader.exec_module(hs)
QUICK = {"BLACKHOLES_HTTP_READ_S": "2", "BLACKHOLES_HTTP_CONNECT_S": "2", "BLACKHOLES_HTTP_DEADLINE_S": "20"}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    """The served folder: the planted model, config.json, and an index naming an absolute URL."""
    folder = tmp_path_factory.mktemp("served")
    tensors(folder / M, gamma=planted_matrix())
    (folder / "config.json").write_text("{}")
    absolute = folder / "absolute"
    absolute.mkdir()
    tensors(absolute / "model.safetensors", gamma=planted_matrix())
    (absolute / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"gamma": "http://127.0.0.1:9/model.safetensors"}}))
    return folder


def remote_case(c: Case, tmp_path, capsys, monkeypatch, started: float | None = None, within: float = 0) -> None:
    check_case(c, tmp_path, capsys, monkeypatch)
    if started is not None:
        assert time.monotonic() - started < within, f"refused after {time.monotonic() - started:.1f} s"


@pytest.mark.parametrize("mode, words", [("hang", "no answer for 2 s"), ("stall", "no answer for 2 s")])
def test_hostile_18_a_server_that_never_answers_is_refused_within_the_deadline(mode, words, served, tmp_path, capsys,
                                                                                monkeypatch):
    with hs.serve(served, mode=mode) as server:
        c = Case(("scan", server.url + M), words=words, env=QUICK, process=True, timeout=30)
        remote_case(c, tmp_path, capsys, monkeypatch, time.monotonic(), within=15)


def test_hostile_18_the_total_deadline_cuts_a_slow_fetch(served, tmp_path, capsys, monkeypatch):
    with hs.serve(served, mode="stall") as server:  # the read deadline is longer than the total one
        env = {"BLACKHOLES_HTTP_READ_S": "30", "BLACKHOLES_HTTP_DEADLINE_S": "2"}
        c = Case(("scan", server.url + M), words="total deadline of 2 s", env=env, process=True, timeout=30)
        remote_case(c, tmp_path, capsys, monkeypatch, time.monotonic(), within=15)


def test_hostile_18_deadline_settings_are_checked(tmp_path, capsys, monkeypatch):
    c = Case(("scan", "http://127.0.0.1:9/model.safetensors"), words="BLACKHOLES_HTTP_READ_S",
             env={"BLACKHOLES_HTTP_READ_S": "soon"}, process=True, timeout=30)
    remote_case(c, tmp_path, capsys, monkeypatch)


def test_hostile_18_index_naming_an_absolute_url(served, tmp_path, capsys, monkeypatch):
    with hs.serve(served) as server:
        c = Case(("scan", server.url + "absolute/", "--key", "gamma"), words="not a file of the model")
        remote_case(c, tmp_path, capsys, monkeypatch)
        assert not [r for r in server.requests if "http://" in r.path]


HUB_ANSWERS = {
    "a list": b"[]",
    "no id": b'{"sha": 5}',
    "a commit that is a path": json.dumps({"id": "org/m", "modelId": "org/m", "sha": "../../x",
                                           "siblings": []}).encode(),
    "nested 100,000 deep": b"[" * 100000 + b"]" * 100000,
    "not JSON": b"<html>hello</html>",
}


@pytest.mark.parametrize("answer", list(HUB_ANSWERS))
def test_hostile_18_hub_answers_of_the_wrong_shape(answer, served, tmp_path, capsys, monkeypatch):
    with hs.serve(served, hub="org/m", api_body=HUB_ANSWERS[answer]) as server:
        env = {**QUICK, "HF_ENDPOINT": server.url.rstrip("/"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        c = Case(("scan", "hf://org/m"), words="Hub", env=env, process=True, timeout=60)
        remote_case(c, tmp_path, capsys, monkeypatch)


def test_hostile_18_a_hub_that_hangs(served, tmp_path, capsys, monkeypatch):
    with hs.serve(served, mode="hang", hub="org/m") as server:
        env = {**QUICK, "HF_ENDPOINT": server.url.rstrip("/"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        c = Case(("scan", "hf://org/m"), words="no answer for 2 s", env=env, process=True, timeout=60)
        remote_case(c, tmp_path, capsys, monkeypatch, time.monotonic(), within=20)


def cache_files(folder: Path) -> tuple[Path, Path]:
    (entry,) = (folder / "cache").glob("*.json")
    (data,) = (folder / "cache").glob("*.bin")
    return entry, data


def test_hostile_18_cached_bytes_are_checked_on_every_reuse(served, tmp_path, capsys, monkeypatch):
    """Fetch into --cache; then flip a byte of the cached tensor, cut it, corrupt its entry: each next run
    fetches again and answers right; never the changed bytes. An output onto a cache file is refused."""
    with hs.serve(served) as server:
        url = server.url + M
        scan = ("scan", url, "--cache", "cache", "--json", "out.json", "--quiet")
        right = groups_are(planted_matrix, "out.json")
        remote_case(Case(scan, status=0, creates=("cache", "cache/*", "out.json"), check=right), tmp_path, capsys,
                    monkeypatch)
        entry, data = cache_files(tmp_path)
        good = data.read_bytes()
        for damage in ("flip", "cut", "entry", "deep entry"):
            (tmp_path / "out.json").unlink()
            if damage == "flip":
                data.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])  # same size, other bytes
            elif damage == "cut":
                data.write_bytes(good[:-4])
            elif damage == "entry":
                entry.write_text(entry.read_text().replace('"format": 2', '"format": 2, "x": 1' + "0" * 5000))
            else:
                entry.write_text("[" * 50000 + "]" * 50000)
            server.reset()
            status, out, err = run(Case(scan, status=0), tmp_path, capsys, monkeypatch)
            assert status == 0 and "Traceback" not in err, err
            right(tmp_path, out)
            assert server.file_bytes_sent(M) >= planted_matrix().nbytes, f"{damage}: the cached bytes were reused"
            assert data.read_bytes() == good
        server.reset()
        (tmp_path / "out.json").unlink()
        status, out, err = run(Case(scan, status=0), tmp_path, capsys, monkeypatch)
        assert status == 0 and server.file_bytes_sent(M) == 0  # intact: reused, nothing fetched
        for target in (entry, data):
            c = Case(("scan", url, "--cache", "cache", "--json", f"cache/{target.name}"), words="is an input")
            remote_case(c, tmp_path, capsys, monkeypatch)


def test_hostile_18_a_file_url_declares_its_files(tmp_path, capsys, monkeypatch):
    make(tmp_path, M)
    c = Case(("scan", (tmp_path / M).as_uri(), "--json", M), words="is an input")
    remote_case(c, tmp_path, capsys, monkeypatch)


# -- issue 17 / issue 18 item 8 (helper "engine"): census and sweep execution, the sweep's grid ---------------------

NOTHING_LISTENS = "tcp://127.0.0.1:1"  # port 1 on the loopback: refused at once

ENGINE = [
    case("sweep: a million-value lin: grid asks for --yes before expanding it", "sweep", "--out", "s", "--sigma",
         "lin:0:1:1000000", "--steps", "3", words="pass --yes", process=True, timeout=HANG * 3),
    case("sweep: a million-value grid times seeds, sized from its ranges", "sweep", "--out", "s", "--sigma",
         "lin:0:1:1000000,log:1e-9:1:1000000", "--seeds", "0-999", words="2,000,000,000 runs", process=True,
         timeout=HANG * 3),
    case("sweep --sigma 1e308 refused before training", "sweep", "--out", "s", "--sigma", "1e308", "--steps", "3",
         words="beyond float32's range"),
    case("sweep --sigma lin: reaching 1e308 refused before training", "sweep", "--out", "s", "--sigma",
         "lin:0:1e308:3", "--steps", "3", words="beyond float32's range"),
    case("sweep --runs-per-batch 0", "sweep", "--out", "s", "--steps", "3", "--runs-per-batch", "0",
         words="--runs-per-batch must be at least 1"),
    case("sweep --workers 0", "sweep", "--out", "s", "--steps", "3", "--workers", "0",
         words="--workers must be at least 1"),
    case("sweep --scheduler where nothing listens", "sweep", "--out", "s", "--steps", "3", "--scheduler",
         NOTHING_LISTENS, words="cannot reach the Dask scheduler", process=True, timeout=HANG * 3),
    case("census --scheduler where nothing listens", "census", M, "--out", "c", "--scheduler", NOTHING_LISTENS,
         words="cannot reach the Dask scheduler", process=True, timeout=HANG * 3),
    case("census --workers 0", "census", M, "--out", "c", "--workers", "0", words="--workers must be at least 1"),
    case("census --from-file a FIFO", "census", "--from-file", "fifo", "--out", "c", words="is a FIFO",
         process=True, timeout=HANG),
    case("census --from-file /dev/zero", "census", "--from-file", "/dev/zero", "--out", "c", words="is a device",
         process=True, timeout=HANG),
]


# census's outputs (census.jsonl, census.md/html, models/<name>.json and masks) against every file its models read


def census_model_folder(path: Path) -> None:
    """A Hugging Face folder: model.safetensors (planted), config.json, tokenizer.json."""
    path.mkdir(parents=True, exist_ok=True)
    tensors(path / M, **{"model.embed_tokens.weight": planted_matrix()})
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 64}))
    _tokenizer(path / "tokenizer.json")


def census_json(source: str) -> str:
    """models/<name>.json of ``census SOURCE`` with the default options (the first task's name)."""
    from blackholes.pipelines.census_scan import Task

    return f"{Task(source).name}.json"


@builds("trap_model", "trap_census")
def _census_hardlink_trap(path):
    """trap_census/models/<name>.json is a hard link to trap_model's config.json."""
    census_model_folder(path.parent / "trap_model")
    (path.parent / "trap_census" / "models").mkdir(parents=True)
    os.link(path.parent / "trap_model" / "config.json", path.parent / "trap_census" / "models" / census_json("trap_model"))


@builds("linked_model", "linked_census")
def _census_symlink_trap(path):
    """linked_model/tokenizer.json is a symlink to a tokenizer kept in linked_census/models/ under the very
    name the census would write there: writing it would change the model's tokenizer."""
    model, models = path.parent / "linked_model", path.parent / "linked_census" / "models"
    census_model_folder(model)
    models.mkdir(parents=True)
    kept = models / census_json("linked_model")
    (model / "tokenizer.json").rename(kept)
    (model / "tokenizer.json").symlink_to(os.path.relpath(kept, model))


@builds("home")
def _census_in_its_model_folder(path):
    """home/ is both the census folder and the model's: the model lives in home/models/, and home/census.md
    (rewritten by every census) is a hard link to its config.json."""
    census_model_folder(path / "models")
    os.link(path / "models" / "config.json", path / "census.md")


@builds("model_here")
def _model_here(path):
    census_model_folder(path)


CENSUS_OUTPUTS = [
    case("census: models/<name>.json would be the model's config.json (a hard link)", "census", "trap_model",
         "--out", "trap_census", "--workers", "1", words="is an input"),
    case("census: models/<name>.json would be the model's tokenizer.json (a symlink into the census)", "census",
         "linked_model", "--out", "linked_census", "--workers", "1", words="is an input"),
    case("census --masks: the same, with masks asked for", "census", "linked_model", "--out", "linked_census",
         "--masks", "--workers", "1", words="is an input"),
    case("census --out the model's folder: census.md is its config.json", "census", "home/models", "--out", "home",
         "--workers", "1", words="is an input"),
    case("census --out the model's folder itself", "census", "model_here", "--out", "model_here", "--workers", "1",
         words="not part of a census"),
    case("census --out ../ the model's folder", "census", "model_here", "--out", "model_here/../model_here",
         "--workers", "1", words="not part of a census"),
]


@pytest.mark.parametrize("c", ENGINE + CENSUS_OUTPUTS)
def test_engine_census_and_sweep(c, tmp_path, capsys, monkeypatch):
    check_case(c, tmp_path, capsys, monkeypatch)


@pytest.mark.parametrize("command, sig", [("census", signal.SIGTERM), ("census", signal.SIGHUP),
                                          ("sweep", signal.SIGTERM)])
def test_engine_a_signal_keeps_finished_work_and_exits_128_plus_n(command, sig, tmp_path):
    """SIGTERM and SIGHUP stop census and sweep as they stop train and reproduce: 128 + N, one line."""
    if command == "census":
        models = []
        for i in range(6):
            x = np.random.default_rng(i).integers(0, 20_000, size=(1_200_000, 2)).astype(np.float32)
            save_file({"embeddings": x}, str(tmp_path / f"slow{i}.safetensors"))
            models.append(str(tmp_path / f"slow{i}.safetensors"))
        argv, rows = [*models, "--out", "out", "--workers", "1"], tmp_path / "out" / "census.jsonl"
    else:
        argv, rows = ["--out", "out", "--seeds", "0-5", "--runs-per-batch", "1", "--steps", "300", "--workers", "1",
                      "--vocab", "256", "--width", "16", "--layers", "1", "--heads", "2", "--context", "16"], \
            tmp_path / "out" / "runs.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "blackholes", command, *argv], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (rows.is_file() and rows.read_text()):
            time.sleep(0.02)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    words = {signal.SIGTERM: "terminated (SIGTERM)", signal.SIGHUP: "hung up (SIGHUP)"}[sig]
    assert proc.returncode == 128 + sig and "Traceback" not in err, err
    assert shown_lines(err)[-1].startswith(f"blackholes: {words}: ") and "run the same command again" in err
    kept = [json.loads(line) for line in rows.read_text().splitlines()]
    assert 1 <= len(kept) < 6
