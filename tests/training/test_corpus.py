"""training/corpus.py: reading a corpus safely, never_seen, the windows and their draw counts."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blackholes.errors import BlackholesError
from blackholes.training import corpus as corpora
from blackholes.training.corpus import Corpus, read_corpus


def test_a_path_and_bytes_read_the_same(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"hello world")
    from_path, from_bytes = read_corpus(path), read_corpus(bytearray(b"hello world"))
    assert from_path.data == from_bytes.data == b"hello world"
    assert from_path.path == path and from_bytes.path is None and from_bytes.name == "<bytes>"
    assert from_path.to_json()["distinct_bytes"] == 8 and len(from_path.sha256()) == 64
    assert read_corpus(None).path == corpora.default_corpus_path()


def test_size_limit_is_said_when_exceeded(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"x" * 101)
    assert read_corpus(path, limit=101).size == 101
    with pytest.raises(BlackholesError, match=r"has 101 bytes, over the limit of 100 bytes"):
        read_corpus(path, limit=100)
    with pytest.raises(BlackholesError, match="over the limit"):
        read_corpus(b"x" * 5, limit=4)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_and_device_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(BlackholesError, match="is not a regular file .a FIFO."):
        read_corpus(fifo)  # opening it would block forever: must be refused from its mode alone
    if os.path.exists("/dev/zero"):
        with pytest.raises(BlackholesError, match="character device"):
            read_corpus("/dev/zero")


def test_missing_file_and_directory_are_one_line(tmp_path):
    with pytest.raises(BlackholesError, match="no such corpus file"):
        read_corpus(tmp_path / "nope.txt")
    with pytest.raises(BlackholesError, match="directory"):
        read_corpus(tmp_path)


def test_vocabulary_and_length_checks():
    with pytest.raises(BlackholesError, match="0xc3 at offset 3 of <bytes> .*4 such bytes.*--vocab"):
        corpora.check_vocabulary(Corpus("café!é".encode(), None), 128)
    corpora.check_vocabulary(Corpus("café".encode(), None), 256)
    with pytest.raises(BlackholesError, match="has 4 bytes; a training window needs context . 1 = 9"):
        corpora.check_length(Corpus(b"abcd", None), 8)
    corpora.check_length(Corpus(b"abcdefghi", None), 8)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=200), vocab=st.integers(1, 256))
def test_never_seen_matches_a_set_difference(data, vocab):
    expected = sorted(set(range(vocab)) - set(data))
    assert corpora.never_seen(data, vocab) == expected
    assert corpora.never_seen(np.frombuffer(data, np.uint8), vocab) == expected


@settings(max_examples=40, deadline=None)
@given(n=st.integers(20, 300), context=st.integers(1, 19), steps=st.integers(1, 30), batch=st.integers(1, 3),
       seed=st.integers(0, 2**63 - 1))
def test_windows_fit_and_draw_counts_match_brute_force(n, context, steps, batch, seed):
    tokens = np.random.default_rng(seed % 1000).integers(0, 8, n).astype(np.uint8)
    starts = corpora.window_starts(seed, steps, batch, n, context)
    assert starts.shape == (steps, batch) and starts.dtype == np.int64
    assert starts.min() >= 0 and starts.max() + context + 1 <= n  # every window fits
    np.testing.assert_array_equal(starts, corpora.window_starts(seed, steps, batch, n, context))  # from the seed
    inputs, targets = corpora.draw_counts(tokens, starts, context, 8)
    want_in, want_out = np.zeros(8, np.int64), np.zeros(8, np.int64)
    for s in starts.ravel():
        for b in tokens[s : s + context]:
            want_in[b] += 1
        for b in tokens[s + 1 : s + context + 1]:
            want_out[b] += 1
    np.testing.assert_array_equal(inputs, want_in)
    np.testing.assert_array_equal(targets, want_out)


def test_loop_wrappers_are_the_corpus_functions(tmp_path):
    from blackholes.training.loop import TrainConfig, draw_counts, load_corpus, window_starts

    path = tmp_path / "c.txt"
    path.write_bytes(bytes(range(10, 60)) * 4)
    config = TrainConfig(corpus=str(path), steps=7, batch=2, context=16, vocab=64)
    data, where = load_corpus(config)
    assert data == path.read_bytes() and where == path
    starts = window_starts(config, len(data))
    np.testing.assert_array_equal(starts, corpora.window_starts(0, 7, 2, len(data), 16))
    tokens = np.frombuffer(data, np.uint8)
    for got, want in zip(draw_counts(tokens, starts, config), corpora.draw_counts(tokens, starts, 16, 64)):
        np.testing.assert_array_equal(got, want)
