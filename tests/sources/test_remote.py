"""Remote safetensors by byte range: http(s):// from a local server, hf:// through HfFileSystem
pointed at that server, and fsspec's in-memory filesystem. Every test checks the bytes that
actually crossed the wire, on the server's side where it can."""

from __future__ import annotations

import importlib.util
import json
import socket
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blackholes.errors import BlackholesError
from blackholes.io.safetensors import read_header, save_safetensors
from blackholes.sources import http_ranges, remote
from blackholes.sources.remote import is_remote, load_remote


def _import_server():
    spec = importlib.util.spec_from_file_location("bh_test_http_server", Path(__file__).with_name("http_server.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


hs = _import_server()
MIB = 1 << 20
EMB = "model.embed_tokens.weight"
HEAD = "lm_head.weight"


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF_S", 0.0)
    monkeypatch.setattr(http_ranges, "BACKOFF_S", 0.0)


def planted_bf16(rows=512, cols=96, seed=0):
    """BF16 bits with two planted groups of identical rows."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 1 << 16, size=(rows, cols), dtype=np.uint16)
    x[[3, 70, 200]] = x[3]
    x[[5, 6]] = x[5]
    return x


def write_model(folder: Path, *, tie=False, pad_mib=2, name="model.safetensors") -> dict:
    """A model folder: config.json and one file with the embedding, an lm_head, and padding that
    makes the file much bigger than either matrix. Returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    emb = planted_bf16()
    head = np.random.default_rng(1).standard_normal((512, 96)).astype(np.float32)
    pad = np.zeros(pad_mib * MIB // 4, np.float32)
    save_safetensors(folder / name, {"model.layers.0.mlp.weight": pad, EMB: (emb, "BF16"), HEAD: head})
    (folder / "config.json").write_text(json.dumps({"tie_word_embeddings": tie}))
    return {EMB: emb, HEAD: head}


def expected_bytes(path: Path, key: str) -> int:
    """What a load of ``key`` from this file must fetch: the probe (or the whole header) + the tensor."""
    header = read_header(path)
    data_start = min(t.start for t in header.tensors.values())
    return max(min(remote.PROBE_BYTES, path.stat().st_size), data_start) + header.tensors[key].nbytes


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and text, text
    return text


# -- is_remote --------------------------------------------------------------------------------------


@pytest.mark.parametrize("source, expected", [
    ("https://host/m/model.safetensors", True), ("http://127.0.0.1:8/x/", True), ("hf://org/name", True),
    ("HF://org/name@main", True), ("memory://m/model.safetensors", True), ("s3://bucket/x", True),
    ("model.safetensors", False), ("./org/name", False), ("org/name@main", False), ("nosuchproto://x", False),
    ("C:/models/x.safetensors", False),
])
def test_is_remote(source, expected):
    assert is_remote(source) is expected


# -- http(s):// ------------------------------------------------------------------------------------


def test_lone_file_reads_only_header_and_tensor(tmp_path):
    arrays = write_model(tmp_path)
    path = tmp_path / "model.safetensors"
    with hs.serve(tmp_path) as server:
        m = load_remote(server.url + "model.safetensors", key=EMB)
        sent = server.bytes_sent
        ranges = [r.range for r in server.requests]
    assert m.array.dtype == np.uint16 and np.array_equal(m.array, arrays[EMB])
    assert (m.key, m.dtype, m.shape, m.path, m.format) == (EMB, "BF16", (512, 96), None, "safetensors")
    assert m.url == server.url + "model.safetensors" and m.revision  # the ETag
    assert m.bytes_read == sent == expected_bytes(path, EMB)
    assert m.bytes_read <= arrays[EMB].nbytes + MIB < path.stat().st_size / 2
    start = read_header(path).tensors[EMB].start
    assert ranges == [f"bytes=0-{remote.PROBE_BYTES - 1}", f"bytes={start}-{start + arrays[EMB].nbytes - 1}"]


def test_lone_file_picks_like_a_local_file(tmp_path):
    arrays = write_model(tmp_path)
    with hs.serve(tmp_path) as server:
        m = load_remote(server.url + "model.safetensors", matrix="output")
        assert (m.key, m.note, m.matrix, m.tied) == (HEAD, "well-known name", "output", None)
        assert np.array_equal(m.array, arrays[HEAD])
        with pytest.raises(BlackholesError) as e:
            load_remote(server.url + "model.safetensors", key="model.layers.0.mlp.weight")
    assert "expected a 2-D" in one_line(e)


def test_folder_url_reads_config_then_the_file(tmp_path):
    arrays = write_model(tmp_path, tie=True)
    with hs.serve(tmp_path) as server:
        m = load_remote(server.url)
        asked = [(r.path, r.status) for r in server.requests]
        sent = server.bytes_sent
    assert (m.key, m.tied, m.matrix) == (EMB, True, "output") and "tie_word_embeddings" in m.note
    assert np.array_equal(m.array, arrays[EMB])
    assert asked == [("file:config.json", 200), ("file:model.safetensors.index.json", 404),
                     ("file:model.safetensors", 206), ("file:model.safetensors", 206)]
    config = (tmp_path / "config.json").stat().st_size
    assert m.bytes_read == expected_bytes(tmp_path / "model.safetensors", EMB) + config
    assert sent == m.bytes_read + len(b"404 Not Found\n")  # the index's 404 page: not a model byte


def test_sharded_folder_opens_only_the_shards_needed(tmp_path):
    rng = np.random.default_rng(2)
    emb, head = planted_bf16(), rng.standard_normal((512, 96)).astype(np.float32)
    save_safetensors(tmp_path / "model-00001-of-00002.safetensors",
                     {EMB: (emb, "BF16"), "model.layers.0.w": np.zeros(MIB, np.float32)})
    save_safetensors(tmp_path / "model-00002-of-00002.safetensors",
                     {"model.layers.1.w": np.zeros(MIB, np.float32), HEAD: head})
    weight_map = {EMB: "model-00001-of-00002.safetensors", "model.layers.0.w": "model-00001-of-00002.safetensors",
                  "model.layers.1.w": "model-00002-of-00002.safetensors", HEAD: "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with hs.serve(tmp_path) as server:
        m = load_remote(server.url)  # the output matrix; the embedding's header for the row check
        first = server.file_bytes_sent("model-00001-of-00002.safetensors")
        second = server.file_bytes_sent("model-00002-of-00002.safetensors")
        server.reset()
        e = load_remote(server.url, matrix="input")
        untouched = server.file_bytes_sent("model-00002-of-00002.safetensors")
    assert (m.key, m.note, m.tied) == (HEAD, "output matrix", False) and np.array_equal(m.array, head)
    assert first == remote.PROBE_BYTES  # only its header
    assert second == expected_bytes(tmp_path / "model-00002-of-00002.safetensors", HEAD)
    assert m.bytes_read <= head.nbytes + MIB
    assert e.key == EMB and np.array_equal(e.array, emb) and untouched == 0


def test_header_longer_than_the_probe_takes_one_more_request(tmp_path, monkeypatch):
    arrays = write_model(tmp_path, pad_mib=1)
    monkeypatch.setattr(remote, "PROBE_BYTES", 16)
    with hs.serve(tmp_path) as server:
        m = load_remote(server.url + "model.safetensors", key=HEAD)
        count = len(server.requests)
    assert np.array_equal(m.array, arrays[HEAD]) and count == 3
    assert m.bytes_read == expected_bytes(tmp_path / "model.safetensors", HEAD)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 300), cols=st.integers(1, 40), dtype=st.sampled_from(["BF16", "F16", "F32", "I8"]),
       requests=st.integers(1, 8), piece=st.integers(1, 3000), probe=st.integers(8, 600),
       seed=st.integers(0, 2**32 - 1))
def test_any_tensor_arrives_bit_exact(tmp_path_factory, rows, cols, dtype, requests, piece, probe, seed):
    folder = tmp_path_factory.mktemp("exact")
    rng = np.random.default_rng(seed)
    storage = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32, "I8": np.int8}[dtype]
    bits = rng.integers(0, 256, size=rows * cols * np.dtype(storage).itemsize, dtype=np.uint8)
    x = bits.view(storage).reshape(rows, cols)  # any bit pattern, NaNs included
    save_safetensors(folder / "m.safetensors", {"a": np.arange(7, dtype=np.int64), "x": (x, dtype) if dtype == "BF16"
                                                else x, "z": np.ones(3, np.float32)})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(http_ranges, "RANGE_BYTES", -(-x.nbytes // requests))  # the tensor in that many requests
        mp.setattr(http_ranges, "READ_PIECE", piece)
        mp.setattr(remote, "PROBE_BYTES", probe)
        with hs.serve(folder) as server:
            m = load_remote(server.url + "m.safetensors", key="x")
            sent = server.bytes_sent
        assert m.bytes_read == sent == expected_bytes(folder / "m.safetensors", "x")
    assert m.array.tobytes() == x.tobytes() and m.shape == (rows, cols)


def test_server_without_range_support_is_refused_unread(tmp_path):
    big = tmp_path / "model.safetensors"
    header = json.dumps({EMB: {"dtype": "BF16", "shape": [65536, 2048], "data_offsets": [0, 65536 * 2048 * 2]}})
    with open(big, "wb") as f:  # a sparse 256 MiB file: instant, and far beyond any socket buffer
        f.write(struct.pack("<Q", len(header)) + header.encode())
        f.truncate(8 + len(header) + 65536 * 2048 * 2)
    (tmp_path / "config.json").write_text("{}")
    with hs.serve(tmp_path, mode="no-range") as server:
        with pytest.raises(BlackholesError) as e:
            load_remote(server.url + "model.safetensors")
        with pytest.raises(BlackholesError) as folder:
            load_remote(server.url)
        sent = server.file_bytes_sent("model.safetensors")
    assert "ignores Range requests" in one_line(e) and "whole file" in str(e.value)
    assert "ignores Range requests" in one_line(folder)
    assert sent < big.stat().st_size / 8  # what filled the socket buffers before we hung up


@pytest.mark.parametrize("mode, words, folder_words", [
    ("401", "access denied (HTTP 401", "access denied (HTTP 401"),
    ("403", "access denied (HTTP 403", "access denied (HTTP 403"),
    ("404", "not found (HTTP 404)", "no model.safetensors.index.json or model.safetensors at"),
])
def test_http_error_statuses(tmp_path, mode, words, folder_words):
    write_model(tmp_path, pad_mib=0)
    with hs.serve(tmp_path, mode=mode) as server:
        for source, expected in ((server.url + "model.safetensors", words), (server.url, folder_words)):
            with pytest.raises(BlackholesError) as e:
                load_remote(source)
            assert expected in one_line(e) and server.url in str(e.value)


def test_missing_files(tmp_path):
    write_model(tmp_path / "m", pad_mib=0)
    (tmp_path / "empty").mkdir()
    with hs.serve(tmp_path) as server:
        with pytest.raises(BlackholesError) as e:
            load_remote(server.url + "m/nope.safetensors")
        assert "not found (HTTP 404)" in one_line(e)
        with pytest.raises(BlackholesError) as e:
            load_remote(server.url + "empty/")
        assert "no model.safetensors.index.json or model.safetensors at" in one_line(e)


def test_unreachable_url():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BlackholesError) as e:
        load_remote(f"http://127.0.0.1:{port}/model.safetensors")
    assert "cannot reach" in one_line(e)


def test_a_dropped_connection_resumes_where_it_stopped(tmp_path):
    arrays = write_model(tmp_path, pad_mib=1)
    with hs.serve(tmp_path, drop_after=100_000, drops=1) as server:
        m = load_remote(server.url + "model.safetensors", key=HEAD)
        sent, tensor_requests = server.bytes_sent, [r for r in server.requests if r.range != "bytes=0-65535"]
    assert np.array_equal(m.array, arrays[HEAD])
    assert m.bytes_read == sent == expected_bytes(tmp_path / "model.safetensors", HEAD)  # nothing fetched twice
    info = read_header(tmp_path / "model.safetensors").tensors[HEAD]
    assert [r.range for r in tensor_requests] == [f"bytes={info.start}-{info.end - 1}",
                                                  f"bytes={info.start + 100_000}-{info.end - 1}"]


def test_a_connection_that_keeps_dropping_fails_cleanly(tmp_path, monkeypatch):
    write_model(tmp_path, pad_mib=0)
    monkeypatch.setattr(remote, "PROBE_BYTES", 4096)  # the header's request is not cut
    with hs.serve(tmp_path, drop_after=50_000) as server:  # every body longer than that is cut
        with pytest.raises(BlackholesError) as e:
            load_remote(server.url + "model.safetensors", key=HEAD)  # 196,608 bytes: 3 tries get 150,000
        tensor_requests = [r for r in server.requests if r.range != "bytes=0-4095"]
    assert f"failed {remote.TRIES} times" in one_line(e) and "partial data" in str(e.value)
    assert len(tensor_requests) == remote.TRIES


def test_a_header_that_lies_about_offsets(tmp_path):
    def write(name, entry, data_bytes):
        header = json.dumps({"x": entry}).encode()
        (tmp_path / name).write_bytes(struct.pack("<Q", len(header)) + header + bytes(data_bytes))

    write("past_end.safetensors", {"dtype": "F32", "shape": [64, 64], "data_offsets": [0, 64 * 64 * 4]}, 1000)
    write("wrong_shape.safetensors", {"dtype": "F32", "shape": [64, 64], "data_offsets": [0, 1000]}, 1000)
    write("odd_dtype.safetensors", {"dtype": "F8_E8M0", "shape": [10, 100], "data_offsets": [0, 1000]}, 1000)
    (tmp_path / "long_header.safetensors").write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with hs.serve(tmp_path) as server:
        for name, words in [("past_end", "truncated safetensors file"), ("wrong_shape", "does not match"),
                            ("odd_dtype", "cannot read"), ("long_header", "header is truncated")]:
            server.reset()
            with pytest.raises(BlackholesError) as e:
                load_remote(server.url + name + ".safetensors", key="x")
            assert words in one_line(e), name
            assert len(server.requests) == 1  # refused from the header alone: no tensor byte fetched


def test_memory_is_the_tensor_plus_a_small_margin(tmp_path):
    import tracemalloc

    big = np.random.default_rng(3).integers(0, 1 << 16, size=(4096, 1024), dtype=np.uint16)  # 8 MiB
    save_safetensors(tmp_path / "m.safetensors", {EMB: (big, "BF16"), "pad": np.zeros(MIB, np.float32)})
    with hs.serve(tmp_path) as server:
        load_remote(server.url + "m.safetensors")  # warm: imports and first-call allocations
        tracemalloc.start()
        try:
            m = load_remote(server.url + "m.safetensors")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert np.array_equal(m.array, big)
    assert big.nbytes <= peak <= big.nbytes + MIB, peak


@given(first=st.integers(0, 10**12), length=st.integers(1, 10**9), slack=st.integers(0, 10**9),
       junk=st.text(max_size=12))
def test_content_range_parsing(first, length, slack, junk):
    last, total = first + length - 1, first + length + slack
    assert http_ranges.content_range(f"bytes {first}-{last}/{total}") == (first, last, total)
    assert http_ranges.content_range(f"bytes {first}-{last}/*") is None  # no size: refused
    assert http_ranges.content_range(f"bytes {last + 1}-{last}/{total}") is None
    assert http_ranges.content_range(f"bytes {first}-{last}/{last}") is None  # ends past the file
    if not junk.strip().isdigit():
        assert http_ranges.content_range(f"bytes {first}-{junk}/{total}") is None


@settings(max_examples=300)
@given(size=st.integers(0, 2000), a=st.none() | st.integers(0, 2500), b=st.none() | st.integers(0, 2500))
def test_the_test_server_range_parsing(size, a, b):
    data = bytes(range(256)) * 8
    data = data[:size]
    header = f"bytes={'' if a is None else a}-{'' if b is None else b}"
    span = hs._parse_range(header, size)
    if a is None and b is None:
        assert span is None
    elif a is None:  # the last b bytes
        assert span == ("unsatisfiable" if b == 0 or size == 0 else (max(0, size - b), size))
    elif a >= size or (b is not None and b < a):
        assert span == "unsatisfiable"
    else:
        start, stop = span
        assert data[start:stop] == data[a : size if b is None else b + 1]


def test_a_server_that_sends_another_range(tmp_path, monkeypatch):
    write_model(tmp_path, pad_mib=0)
    monkeypatch.setattr(hs, "_parse_range", lambda header, size: (1, 11) if header else None)
    with hs.serve(tmp_path) as server:
        with pytest.raises(BlackholesError) as e:
            load_remote(server.url + "model.safetensors")
    assert "asked for bytes 0-65,535, the server sent bytes 1-10" in one_line(e)


def test_a_file_that_changes_while_it_is_read(tmp_path, monkeypatch):
    arrays = write_model(tmp_path, pad_mib=0)
    read_header_then_change = remote.read_remote_header

    def changed_after_the_header(file):
        header = read_header_then_change(file)
        save_safetensors(tmp_path / "model.safetensors", {EMB: (arrays[EMB][:100], "BF16")})
        return header

    monkeypatch.setattr(remote, "read_remote_header", changed_after_the_header)
    with hs.serve(tmp_path) as server:
        with pytest.raises(BlackholesError) as e:
            load_remote(server.url + "model.safetensors", key=EMB)
    assert "changed on the server while it was read" in one_line(e)


def test_bad_matrix_argument():
    with pytest.raises(BlackholesError) as e:
        load_remote("http://127.0.0.1:9/model.safetensors", matrix="both")
    assert "matrix must be" in one_line(e)


def test_progress_bar_shows_bytes_and_speed(tmp_path, capsys):
    write_model(tmp_path, pad_mib=0)
    with hs.serve(tmp_path) as server:
        load_remote(server.url + "model.safetensors", key=EMB, progress=True)
    err = capsys.readouterr().err
    assert EMB in err and "B/s" in err and "96.0k" in err  # 98,304 bytes, in KiB


# -- hf:// through HfFileSystem, pointed at the local server ---------------------------------------


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """Serve a model folder as the Hub repository org/name; yields (server, arrays)."""
    arrays = write_model(tmp_path / "repo", tie=True, pad_mib=1)
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token file of the machine's user

    def start(**kw):
        server = hs.serve(tmp_path / "repo", hub="org/name", **kw)
        state = server.__enter__()
        monkeypatch.setenv("HF_ENDPOINT", state.url.rstrip("/"))
        opened.append(server)
        return state

    opened = []
    yield start, arrays
    for server in opened:
        server.__exit__(None, None, None)


def test_hub_model_resolves_the_commit_and_reads_by_range(hub):
    start, arrays = hub
    server = start()
    m = load_remote("hf://org/name")
    assert (m.key, m.tied, m.revision) == (EMB, True, server.sha)
    assert m.url == f"hf://org/name@{server.sha}/model.safetensors"
    assert np.array_equal(m.array, arrays[EMB])
    files = server.file_bytes_sent()
    config = len(json.dumps({"tie_word_embeddings": True}))
    assert m.bytes_read == files == expected_bytes(server.folder / "model.safetensors", EMB) + config
    resolves = [r for r in server.requests if r.path.startswith("file:model.safetensors")]
    assert resolves and all(r.status == 206 and r.range for r in resolves)


def test_hub_file_at_a_pinned_revision(hub, monkeypatch):
    start, arrays = hub
    server = start()
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    m = load_remote(f"hf://org/name@{server.sha}/model.safetensors", matrix="output")
    assert (m.key, m.revision) == (HEAD, server.sha) and np.array_equal(m.array, arrays[HEAD])
    sent = [r for r in server.requests if r.path.startswith("file:")]
    assert sent and all(r.headers.get("Authorization") == "Bearer hf_test_token" for r in sent)


@pytest.mark.parametrize("source, words", [
    ("hf://org/name@nope", "no such revision"), ("hf://org/other", "no such model on the Hub"),
    ("hf://org/name/missing.safetensors", "not found (HTTP 404)"), ("hf://justone", "not a Hub path"),
])
def test_hub_errors(hub, source, words):
    start, _ = hub
    start()
    with pytest.raises(BlackholesError) as e:
        load_remote(source)
    assert words in one_line(e)


def test_hub_refusals(hub, monkeypatch):
    start, _ = hub
    start(mode="401")
    with pytest.raises(BlackholesError) as e:
        load_remote("hf://org/name")
    assert "HF_TOKEN" in one_line(e)
    start(mode="no-range")
    with pytest.raises(BlackholesError) as e:
        load_remote("hf://org/name")
    assert "ignores Range requests" in one_line(e)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BlackholesError) as e:
        load_remote("hf://org/name")
    assert "HF_HUB_OFFLINE" in one_line(e)


def test_hub_unreachable(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(BlackholesError) as e:
        load_remote("hf://org/name")
    assert "cannot reach the Hugging Face Hub" in one_line(e)


# -- other fsspec filesystems: the in-memory one ---------------------------------------------------


@pytest.fixture
def memory_model(tmp_path, request):
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/bh-{request.node.name.replace('[', '-').replace(']', '')}"
    arrays = write_model(tmp_path, tie=False, pad_mib=1)
    for name in ("model.safetensors", "config.json"):
        fs.pipe(f"{root}/{name}", (tmp_path / name).read_bytes())
    yield fs, root, arrays, tmp_path / "model.safetensors"
    fs.rm(root, recursive=True)


def test_memory_filesystem_file_and_folder(memory_model, monkeypatch):
    fs, root, arrays, path = memory_model
    monkeypatch.setattr(remote, "CHUNK_BYTES", 10_000)  # many cat_file calls
    m = load_remote(f"memory:/{root}/model.safetensors", key=EMB)
    assert np.array_equal(m.array, arrays[EMB]) and m.bytes_read == expected_bytes(path, EMB)
    f = load_remote(f"memory:/{root}")
    assert (f.key, f.note, f.tied) == (HEAD, "output matrix", False) and np.array_equal(f.array, arrays[HEAD])
    assert f.bytes_read == expected_bytes(path, HEAD) + fs.size(f"{root}/config.json")
    with pytest.raises(BlackholesError) as e:
        load_remote(f"memory:/{root}/nope.safetensors")
    assert "not found" in one_line(e)


def test_a_protocol_whose_package_is_missing():
    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed")
    with pytest.raises(BlackholesError) as e:
        load_remote("s3://bucket/model.safetensors")
    assert "needs a package" in one_line(e)


# -- --cache DIR -----------------------------------------------------------------------------------


def test_cache_keeps_the_tensor_and_notices_a_change(tmp_path):
    arrays = write_model(tmp_path / "srv")
    cache = tmp_path / "cache"
    with hs.serve(tmp_path / "srv") as server:
        url = server.url + "model.safetensors"
        first = load_remote(url, key=EMB, cache=cache)
        assert isinstance(first.array.base, np.memmap) or isinstance(first.array, np.memmap)
        assert first.bytes_read == expected_bytes(tmp_path / "srv" / "model.safetensors", EMB)
        server.reset()
        again = load_remote(url, key=EMB, cache=cache)
        assert again.bytes_read == 0 and server.bytes_sent == 0
        assert [r.method for r in server.requests] == ["HEAD"]  # the version check: no body
        assert np.array_equal(again.array, arrays[EMB]) and again.revision == first.revision
        changed_emb = arrays[EMB].copy()
        changed_emb[0, 0] ^= 1  # one bit: a new version of the file (new size, new ETag)
        save_safetensors(tmp_path / "srv" / "model.safetensors", {EMB: (changed_emb, "BF16")})
        third = load_remote(url, key=EMB, cache=cache)
        assert third.bytes_read > 0 and np.array_equal(third.array, changed_emb)
    assert sorted(p.suffix for p in cache.iterdir()) == [".bin", ".bin", ".json"]


def test_cache_keeps_nothing_from_a_failed_fetch(tmp_path, monkeypatch):
    write_model(tmp_path / "srv", pad_mib=0)
    monkeypatch.setattr(remote, "PROBE_BYTES", 4096)
    with hs.serve(tmp_path / "srv", drop_after=50_000) as server:
        with pytest.raises(BlackholesError):
            load_remote(server.url + "model.safetensors", key=HEAD, cache=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # no partial tensor, no entry pointing at one


def test_cache_of_a_hub_model_at_a_commit(hub, tmp_path):
    start, arrays = hub
    server = start()
    first = load_remote("hf://org/name", cache=tmp_path / "c")
    server.reset()
    again = load_remote("hf://org/name", cache=tmp_path / "c")
    assert again.bytes_read == 0 and server.file_bytes_sent() == 0
    assert (again.key, again.tied, again.note, again.revision) == (first.key, True, first.note, server.sha)
    assert np.array_equal(again.array, arrays[EMB])


def test_cache_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(BlackholesError) as e:
        load_remote("http://127.0.0.1:9/m.safetensors", cache=tmp_path / "file" / "sub")
    assert "cannot create the cache folder" in one_line(e)
