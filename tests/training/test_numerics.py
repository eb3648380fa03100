"""Numerics are part of the recipe: the option, its one default, the recording, and recordings made before."""

from __future__ import annotations

import dataclasses
import json

import pytest
from blackholes.errors import BlackholesError
from blackholes.training.config import NUMERICS, TrainConfig
from blackholes.training.loop import train
from blackholes.io.recording import Recording, read_recording_metadata, recorded_numerics
from train_helpers import small, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("numerics") / "corpus.txt")


def test_eager_is_the_one_default_and_part_of_the_recipe():
    c = TrainConfig()
    c.validate()
    assert NUMERICS == ("eager", "compiled") and c.numerics == "eager" and not c.compiled
    assert c.recipe()["numerics"] == "eager" and "compile" not in c.recipe()
    compiled = dataclasses.replace(c, numerics="compiled")
    compiled.validate()  # replace() after validate() works: the older alias was cleared
    assert compiled.compiled and compiled.recipe() != c.recipe()  # another recipe, not another execution


@pytest.mark.parametrize("compile, numerics, expected", [(True, "eager", "compiled"), (False, "eager", "eager"),
                                                          (None, "compiled", "compiled"), (True, "compiled", "compiled")])
def test_compile_is_the_older_spelling(compile, numerics, expected):
    c = TrainConfig(compile=compile, numerics=numerics)
    c.validate()
    assert c.numerics == expected and c.compile is None


def test_contradictions_and_unknown_numerics_are_one_line():
    with pytest.raises(BlackholesError, match="compile=False and --numerics compiled disagree"):
        TrainConfig(compile=False, numerics="compiled").validate()
    with pytest.raises(BlackholesError, match="--numerics must be one of eager, compiled, got 'fast'"):
        TrainConfig(numerics="fast").validate()


def test_the_recording_says_its_numerics(corpus, tmp_path):
    result = train(small(corpus, steps=3), tmp_path / "r.safetensors", progress=False)
    meta = read_recording_metadata(result.path)
    assert meta["numerics"] == meta["config"]["numerics"] == result.numerics == "eager" and meta["compiled"] is False
    assert Recording(result.path).numerics == "eager" and result.to_json()["numerics"] == "eager"


@pytest.mark.parametrize("compiled, expected", [(True, "compiled"), (False, "eager")])
def test_a_recording_made_before_numerics_is_read_as_what_it_was(corpus, tmp_path, compiled, expected):
    """Older recordings have no ``numerics`` key (nor one in ``config``): their ``compiled`` field says which."""
    result = train(small(corpus, steps=2), tmp_path / "new.safetensors", progress=False)
    meta = read_recording_metadata(result.path)
    meta.pop("numerics")
    meta["config"].pop("numerics")  # older recipes dropped the execution knobs, compile among them
    meta["compiled"] = compiled
    from blackholes.io.recording import encode_metadata

    old = tmp_path / "old.safetensors"
    raw = result.path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = encode_metadata(meta)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    old.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    assert "numerics" not in read_recording_metadata(old)
    assert Recording(old).numerics == expected == recorded_numerics(read_recording_metadata(old))
    assert Recording(old).to_json()["numerics"] == expected
    assert recorded_numerics({}) is None  # the original notebooks' files say nothing
