"""The streaming safetensors writer: preallocated offsets, compaction, metadata."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from blackholes.io.recording import decode_metadata, encode_metadata, read_recording_metadata
from blackholes.training.recording import RecordingWriter, TensorSpec
from blackholes.io.safetensors import read_header

SPECS = [TensorSpec("embeddings", "F32", (3, 2)), TensorSpec("logits", "F32", (3,)), TensorSpec("losses", "F32", ())]


def record(i: int) -> dict[str, np.ndarray]:
    return {
        "embeddings": np.full((3, 2), i, np.float32) + np.arange(6, dtype=np.float32).reshape(3, 2) / 10,
        "logits": np.full(3, -i, np.float32),
        "losses": np.float32(i / 2),
    }


def write_records(path, n_total: int, n_written: int, block: int = 2) -> RecordingWriter:
    w = RecordingWriter(path, SPECS, n_total, encode_metadata({"complete": True, "steps": list(range(n_total))}))
    for start in range(0, n_written, block):
        stop = min(start + block, n_written)
        for spec in SPECS:
            w.write(spec.name, start, np.stack([record(i)[spec.name] for i in range(start, stop)]))
    return w


def test_complete_file_loads_with_safetensors(tmp_path):
    path = tmp_path / "r.safetensors"
    write_records(path, 5, 5).close()
    data = load_file(path)
    assert data["embeddings"].shape == (5, 3, 2) and data["losses"].shape == (5,)
    for i in range(5):
        for name, value in record(i).items():
            np.testing.assert_array_equal(data[name][i], value)
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert n % 8 == 0  # data stays 8-byte aligned
    assert read_recording_metadata(path) == {"complete": True, "steps": [0, 1, 2, 3, 4]}


@settings(max_examples=25, deadline=None)
@given(total=st.integers(1, 9), data=st.data())
def test_truncate_keeps_exactly_the_first_records(tmp_path_factory, total, data):
    keep = data.draw(st.integers(1, total))
    path = tmp_path_factory.mktemp("rec") / "r.safetensors"
    w = write_records(path, total, keep, block=data.draw(st.integers(1, 4)))
    meta = {"complete": False, "steps": list(range(keep)), "interrupted_at_step": keep - 1}
    w.truncate(keep, encode_metadata(meta))
    w.close()
    loaded = load_file(path)
    assert loaded["embeddings"].shape == (keep, 3, 2)
    for i in range(keep):
        for name, value in record(i).items():
            np.testing.assert_array_equal(loaded[name][i], value)
    assert read_recording_metadata(path) == meta
    header = read_header(path)
    assert path.stat().st_size == max(t.end for t in header.tensors.values())


def test_write_rejects_mismatched_blocks(tmp_path):
    w = write_records(tmp_path / "r.safetensors", 3, 0)
    with pytest.raises(ValueError, match="does not match"):
        w.write("logits", 0, np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="outside"):
        w.write("logits", 2, np.zeros((2, 3), np.float32))
    w.close()


def test_metadata_round_trip_and_plain_files(tmp_path):
    meta = {"sigma": 0.0, "never_seen": [0, 5], "dtype": "bf16", "complete": True, "centre": [0.015625, -1e-3]}
    encoded = encode_metadata(meta)
    assert all(isinstance(v, str) for v in encoded.values())
    assert encoded["complete"] == "true"
    assert decode_metadata(encoded) == meta
    assert decode_metadata({"note": "not json"}) == {"note": "not json"}
    from safetensors.numpy import save_file

    save_file({"embeddings": np.zeros((2, 3, 4), np.float32)}, tmp_path / "old.safetensors")
    assert read_recording_metadata(tmp_path / "old.safetensors") == {}
    assert json.loads(encoded["centre"]) == [0.015625, -1e-3]
