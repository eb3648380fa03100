"""`blackholes train`'s options come from TrainConfig's fields: one default, told truly by --help."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from blackholes.cli.main import build_parser
from blackholes.training.config import TrainConfig, add_config_arguments, config_from_arguments


def train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def cli_fields():
    return [f for f in dataclasses.fields(TrainConfig) if "cli" in f.metadata]


def test_every_option_defaults_to_the_dataclass_default():
    args = train_parser().parse_args(["--out", "r.safetensors"])
    defaults = TrainConfig()
    for f in cli_fields():
        assert getattr(args, f.name) == getattr(defaults, f.name), f.name
    assert config_from_arguments(args) == TrainConfig()  # nothing declared twice, nothing lost


def test_help_states_each_true_default(capsys):
    with pytest.raises(SystemExit):
        train_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: True)" not in text and "(default: False)" not in text
    assert "--numerics {eager,compiled}" in text and "(a recipe of its own, faster; --no-compile is the older " \
        "spelling of eager) (default: eager)" in text and "--no-compile the same as --numerics eager" in text
    assert "do not record Adam's momentum and variance (default: recorded)" in text
    for option, shown in (("--steps N", "10000"), ("--sigma S", "0"), ("--lr LR", "0.001"), ("--eps EPS", "1e-08"),
                          ("--beta2 B2", "0.999"), ("--clip C", "1"), ("--threads N", "1"), ("--vocab V", "128")):
        body = text[text.index("run: --out PATH"):]  # past the usage lines
        own = re.search(r"\(default: ([^)]*)\)", body[body.index(option + " "):])  # the option's first default
        assert own.group(1) == shown, option
    assert "--precision {bf16,fp32,bf16-mixed}, --dtype" in text and "--init {centre,unit,normal}" in text


def test_options_reach_the_config():
    args = train_parser().parse_args([
        "--out", "r.safetensors", "--steps", "7", "--dtype", "fp32", "--init", "unit", "--sigma", "0.5",
        "--no-compile", "--no-optimizer-state", "--mlp-ratio", "3", "--weight-decay", "0.1", "--threads", "0",
    ])
    c = config_from_arguments(args)
    assert (c.steps, c.precision, c.init, c.sigma, c.numerics, c.optimizer_state, c.mlp_ratio, c.weight_decay,
            c.threads) == (7, "fp32", "unit", 0.5, "eager", False, 3, 0.1, 0)
    compiled = config_from_arguments(train_parser().parse_args(["--out", "r.safetensors", "--numerics", "compiled"]))
    assert compiled.numerics == "compiled" and compiled.compiled


def test_helper_declares_every_field_once():
    p = argparse.ArgumentParser()
    groups = add_config_arguments(p)
    assert set(groups) == {"run", "model", "optimizer", "recording", "execution"}
    dests = [a.dest for a in p._actions if a.dest != "help" and a.option_strings != ["--no-compile"]]
    assert sorted(dests) == sorted(f.name for f in cli_fields()) and len(dests) == len(set(dests))
    assert "dtype" not in dests  # only an alias flag of --precision
