"""recording.Recording: the one reader of a recording (and the header written complete: false first)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from blackholes.errors import BlackholesError
from blackholes.training.loop import train
from blackholes.io.recording import Recording, encode_metadata, read_recording_metadata
from blackholes.training.recording import RecordingWriter, TensorSpec
from train_helpers import bits, small, write_corpus


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    base = tmp_path_factory.mktemp("reader")
    corpus = write_corpus(base / "c.txt")
    result = train(small(corpus, every=5), base / "run.safetensors", progress=False)
    return result


def test_reader_sees_what_train_wrote(recording):
    import torch
    from safetensors.torch import load_file

    rec = Recording(recording.path, require=("grads", "logits"))
    assert len(rec) == 4 and rec.shape == (4, 32, 16) and (rec.vocab, rec.dim) == (32, 16)
    assert rec.dtype == "BF16" and rec.dtype_of("losses") == "BF16" and rec.precision == "bf16"
    assert rec.complete is True and rec.steps.tolist() == [0, 5, 10, 12] == recording.recorded_steps
    assert rec.metadata == read_recording_metadata(recording.path)  # the thin wrapper agrees
    assert rec.metadata["never_seen"] == recording.never_seen and rec.not_strings == []
    assert "momentum" in rec and "nothing" not in rec and "grad_norms" in rec.keys
    loaded = load_file(recording.path)
    for key in rec.keys:
        mapped = rec.tensor(key)
        assert isinstance(mapped, np.memmap) or mapped.size == 0  # memory-mapped, not read
        assert np.array_equal(bits(mapped), loaded[key].view(torch.int16).numpy().view(np.uint16)), key
    assert json.dumps(rec.to_json())


def test_original_notebook_file_without_metadata(tmp_path):
    path = tmp_path / "old.safetensors"
    save_file({"embeddings": np.zeros((3, 4, 2), np.float32), "grads": np.zeros((3, 4, 2), np.float32)}, path)
    rec = Recording(path)
    assert rec.metadata == {} and rec.complete is None and rec.precision is None
    assert rec.steps.tolist() == [0, 1, 2]  # record i is step i


@pytest.mark.parametrize("tensors,metadata,words", [
    ({"weights": np.zeros((2, 2), np.float32)}, None, "not a training recording: missing tensor(s) embeddings"),
    ({"embeddings": np.zeros((2, 4), np.float32)}, None, "'embeddings' must be [steps, vocab, dim]"),
    ({"embeddings": np.zeros((2, 4, 3), np.int32)}, None, "expected BF16, F16, F32 or F64"),
    ({"embeddings": np.zeros((2, 4, 3), np.float32), "grads": np.zeros((1, 4, 3), np.float32)}, None,
     "shapes disagree: 'embeddings' is [2, 4, 3] but 'grads' is [1, 4, 3]"),
    ({"embeddings": np.zeros((2, 4, 3), np.float32), "logits": np.zeros((2, 3), np.float32)}, None,
     "shapes disagree"),
    ({"embeddings": np.zeros((2, 4, 3), np.float32), "losses": np.zeros(3, np.float32)}, None, "'losses'"),
    ({"embeddings": np.zeros((2, 4, 3), np.float32)}, {"steps": "[0, 1, 2]"}, "must list 2 integer training steps"),
    ({"embeddings": np.zeros((2, 4, 3), np.float32)}, {"steps": "[0, 0]"}, "must start at 0 and increase"),
    ({"embeddings": np.zeros((2, 4, 3), np.float32)}, {"steps": "[1, 2]"}, "must start at 0 and increase"),
])
def test_what_is_not_a_recording_is_one_line(tmp_path, tensors, metadata, words):
    path = tmp_path / "bad.safetensors"
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(BlackholesError) as e:
        Recording(path, require=("embeddings",))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_required_tensors_are_named(tmp_path):
    path = tmp_path / "r.safetensors"
    save_file({"embeddings": np.zeros((2, 4, 3), np.float32)}, path)
    with pytest.raises(BlackholesError, match=r"missing tensor\(s\) grads, logits .*it has: embeddings"):
        Recording(path, require=("grads", "logits"))
    with pytest.raises(BlackholesError, match="no such file"):
        Recording(tmp_path / "nope.safetensors")


def test_rewrite_metadata_in_place_keeps_every_record(tmp_path):
    path = tmp_path / "r.safetensors"
    specs = [TensorSpec("embeddings", "F32", (2, 3))]
    w = RecordingWriter(path, specs, 3, encode_metadata({"complete": False, "steps": [0, 1, 2]}))
    data = np.arange(18, dtype=np.float32).reshape(3, 2, 3)
    w.write("embeddings", 0, data)
    assert Recording(path, unfinished=True).complete is False  # as the file says while it is being written
    with pytest.raises(BlackholesError, match="still being written"):
        Recording(path)  # refused for analysis: its unwritten records are zeros
    size = path.stat().st_size
    w.rewrite_metadata(encode_metadata({"complete": True, "steps": [0, 1, 2]}))
    w.close()
    rec = Recording(path)
    assert rec.complete is True and path.stat().st_size == size
    np.testing.assert_array_equal(rec.tensor("embeddings"), data)
