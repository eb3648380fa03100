"""Every hyper-parameter of a training run, declared once: :class:`TrainConfig`.

Each field carries its command-line help in its metadata, so ``blackholes train``
declares its options from the dataclass (:func:`add_config_arguments`) and builds the
config back from them (:func:`config_from_arguments`): a default lives here and
nowhere else, and ``--help`` prints the true one.

>>> config = TrainConfig(sigma=0.0, steps=100, precision="bf16-mixed", init="unit")
>>> config.validate()
>>> config.dtype, config.recorded_steps()[-2:], config.records()
('bf16-mixed', [99, 100], 101)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field

from blackholes.errors import BlackholesError
from blackholes.training.precision import PRECISIONS

# What runs must share to be trained stacked in one batched model (training.batched, pipelines.sweep)
SHAPE_FIELDS = ("vocab", "context", "width", "layers", "heads", "mlp_ratio", "batch", "precision", "steps", "threads")
INITS = ("centre", "unit", "normal")  # see blackholes.training.model.INITS for what each one draws
SCHEDULES = ("linear", "constant")
# How a run's forward and backward pass round (benchmarks/numerics_bisect.py measures where they part):
# eager runs PyTorch's kernels one op at a time, as the original experiment trained; compiled runs
# torch.compile's fused kernels, whose bf16 gradients already differ at step 1. Neither is the other's
# fast path, so the numerics belong to the recipe: two runs are the same run only with the same numerics.
NUMERICS = ("eager", "compiled")
_COUNTS = ("steps", "vocab", "context", "width", "layers", "heads", "mlp_ratio", "batch", "every")


def _option(default, group: str, help: str, **cli):
    """A dataclass field that is also a ``blackholes train`` option (see :func:`add_config_arguments`).

    ``cli`` may give ``flags`` (default ``--field-name``), ``metavar``, and ``shown``: how
    ``--help`` states the default when the value itself would not say it well.
    """
    return field(default=default, metadata={"cli": {"group": group, "help": help, **cli}})


def _choices(names) -> str:
    return "{" + ",".join(names) + "}"


@dataclass
class TrainConfig:
    """Every hyper-parameter of a run. The defaults are the "Lil Gatsby" recipe.

    ``dtype`` is the older name of ``precision`` and stays an alias: give either;
    :meth:`validate` sets both to the same mode.

    >>> TrainConfig(corpus="gatsby_clean.txt", sigma=0.0, steps=10_000, dtype="bf16").steps
    10000
    """

    corpus: str | None = _option(None, "run", "training text, any file of bytes", metavar="PATH",
                                 shown="the packaged corpus")
    sigma: float = _option(0.0, "run", "spread of the initial embedding rows (around their shared centre, "
                           "for --init centre/unit; 0: one point)", metavar="S")
    steps: int = _option(10_000, "run", "training steps", metavar="N")
    seed: int = _option(0, "run", "random seed (initialisation and windows)", metavar="N")
    dtype: str | None = None  # alias of precision, kept for older callers; filled in by validate()
    precision: str = _option(
        "bf16", "run", "bf16: parameters, gradients and Adam state all bf16 (the original); fp32: all fp32; "
        "bf16-mixed: fp32 master weights and Adam state, forward/backward under bf16 autocast "
        "(--dtype is the older name)", flags=("--precision", "--dtype"), metavar=_choices(PRECISIONS))
    init: str = _option(
        "centre", "run", "embedding rows: centre = c + sigma*eps with c ~ N(0, 0.02^2); unit = a random unit "
        "vector + sigma*eps; normal = sigma*eps, no shared point (needs --sigma > 0)", metavar=_choices(INITS))
    # model
    vocab: int = _option(128, "model", "byte values: 128 = ASCII, 256 = any byte", metavar="V")
    context: int = _option(128, "model", "sequence length", metavar="T")
    width: int = _option(64, "model", "embedding width", metavar="D")
    layers: int = _option(2, "model", "transformer blocks", metavar="L")
    heads: int = _option(2, "model", "attention heads", metavar="H")
    mlp_ratio: int = _option(4, "model", "MLP hidden width / width", metavar="R")
    # optimizer: AdamW, linear decay of the learning rate to 0 over the run
    lr: float = _option(1e-3, "optimizer", "peak learning rate", metavar="LR")
    schedule: str = _option("linear", "optimizer", "learning rate: linear decay to 0 over the run, or constant",
                            metavar=_choices(SCHEDULES))
    beta1: float = _option(0.9, "optimizer", "Adam's first-moment decay", metavar="B1")
    beta2: float = _option(0.999, "optimizer", "Adam's second-moment decay", metavar="B2")
    eps: float = _option(1e-8, "optimizer", "Adam's epsilon", metavar="EPS")
    weight_decay: float = _option(0.0, "optimizer", "decoupled weight decay", metavar="WD")
    clip: float = _option(1.0, "optimizer", "global gradient-norm clipping (0: off)", metavar="C")
    batch: int = _option(1, "optimizer", "sequences per step, each a random window of context + 1 bytes",
                         metavar="B")
    # recording
    every: int = _option(1, "recording", "record every K-th step (step 0 and the last always)", metavar="K")
    optimizer_state: bool = _option(True, "recording", "do not record Adam's momentum and variance",
                                    flags=("--no-optimizer-state",), shown="recorded")
    # numerics: how the forward and backward pass round (part of the recipe: see NUMERICS)
    numerics: str = _option(
        "eager", "run", "eager: PyTorch's own kernels, one op at a time, rounding as the original experiment did "
        "(the reference); compiled: torch.compile's fused kernels, which round differently from the first step "
        "(a recipe of its own, faster; --no-compile is the older spelling of eager)",
        flags=("--numerics",), metavar=_choices(NUMERICS), aliases={"--no-compile": "eager"})
    compile: bool | None = None  # older spelling of numerics (True: compiled, False: eager); cleared by validate()
    # execution (recorded, but not part of the recipe)
    threads: int = _option(1, "execution", "torch intra-op threads (1 is fastest at this size and makes results "
                           "independent of the core count; 0: torch's own setting)", metavar="N")

    def validate(self) -> None:
        """Raise :class:`BlackholesError` (one line) for any impossible setting; resolve ``dtype`` and ``compile``."""
        self._resolve_precision()
        self._resolve_numerics()
        self._check_choices()
        self._check_counts()
        self._check_numbers()
        self._check_threads()

    def _resolve_precision(self) -> None:
        # dtype is an alias: given alone it sets the precision; given with a different
        # precision (other than the default) it is a contradiction, not a silent choice.
        if self.dtype is not None and self.dtype != self.precision:
            if self.precision != "bf16":
                raise BlackholesError(f"--dtype {self.dtype} and --precision {self.precision} disagree; give one")
            self.precision = self.dtype
        if self.precision not in PRECISIONS:
            raise BlackholesError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        self.dtype = self.precision

    def _resolve_numerics(self) -> None:
        # compile is the older spelling: given alone it sets the numerics; given against other
        # explicit numerics it is a contradiction. Cleared once read, so replace() may change numerics.
        if self.compile is not None:
            implied = "compiled" if self.compile else "eager"
            if implied != self.numerics and self.numerics != NUMERICS[0]:
                raise BlackholesError(f"compile={self.compile} and --numerics {self.numerics} disagree; give one")
            self.numerics, self.compile = implied, None
        _need(self.numerics in NUMERICS, f"--numerics must be one of {', '.join(NUMERICS)}, got {self.numerics!r}")

    @property
    def compiled(self) -> bool:
        """Whether the run's steps are torch.compile'd (``numerics == "compiled"``)."""
        return self.numerics == "compiled"

    def _check_choices(self) -> None:
        _need(self.schedule in SCHEDULES, f"--schedule must be linear or constant, got {self.schedule!r}")
        _need(self.init in INITS, f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        _need(_is_number(self.sigma) and math.isfinite(self.sigma) and self.sigma >= 0,
              f"--sigma must be a finite number >= 0 (the spread of --init {self.init}), got {self.sigma}")
        _need(self.init != "normal" or self.sigma > 0,
              "--init normal draws every row from N(0, sigma^2): give --sigma > 0 (GPT-2 uses 0.02)")

    def _check_counts(self) -> None:
        for name in _COUNTS:
            value = getattr(self, name)
            _need(_is_int(value) and value >= 1, f"--{name.replace('_', '-')} must be an integer >= 1, got {value}")
            setattr(self, name, int(value))  # numpy integers welcome; stored as plain ints
        _need(self.vocab <= 256, f"--vocab must be at most 256 (tokens are bytes), got {self.vocab}")
        _need(self.width % self.heads == 0, f"--width ({self.width}) must be divisible by --heads ({self.heads})")
        _need(_is_int(self.seed) and 0 <= self.seed < 2**63, f"--seed must be between 0 and 2**63-1, got {self.seed}")
        self.seed = int(self.seed)

    def _check_numbers(self) -> None:
        for name in ("lr", "eps"):
            value = getattr(self, name)
            _need(_is_number(value) and math.isfinite(value) and value > 0, f"--{name} must be > 0, got {value}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            _need(_is_number(value) and 0 <= value < 1, f"--{name} must be in [0, 1), got {value}")
        _need(_is_number(self.weight_decay) and math.isfinite(self.weight_decay) and self.weight_decay >= 0,
              "--weight-decay must be >= 0")
        _need(_is_number(self.clip) and math.isfinite(self.clip) and self.clip >= 0,
              "--clip must be >= 0 (0 = no clipping)")

    def _check_threads(self) -> None:
        _need(_is_int(self.threads) and self.threads >= 0, f"--threads must be an integer >= 0, got {self.threads}")
        cpus = os.cpu_count()
        _need(cpus is None or self.threads <= cpus,
              f"--threads {self.threads} is more than the {cpus} CPUs of this machine")
        self.threads = int(self.threads)

    def recipe(self) -> dict:
        """The hyper-parameters as a JSON-ready dict (everything but the execution knobs), numerics included."""
        d = dataclasses.asdict(self)
        for key in ("compile", "threads"):
            d.pop(key)
        if d["corpus"] is not None:
            d["corpus"] = str(d["corpus"])  # a Path is welcome too
        return d

    def records(self) -> int:
        """How many records :meth:`recorded_steps` lists, by arithmetic (no list is built).

        >>> TrainConfig(steps=12, every=5).records()
        4
        """
        return self.steps // self.every + 1 + (1 if self.steps % self.every else 0)

    def recorded_steps(self) -> list[int]:
        """Training step stored at each record index: 0, every, 2*every, ..., and always ``steps``.

        >>> TrainConfig(steps=12, every=5).recorded_steps()
        [0, 5, 10, 12]
        """
        steps = list(range(0, self.steps + 1, self.every))
        if steps[-1] != self.steps:
            steps.append(self.steps)
        return steps


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise BlackholesError(message)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# ---------------------------------------------------------------------------- the command line


def add_config_arguments(parser: argparse.ArgumentParser, groups: dict | None = None) -> dict:
    """Declare one option per :class:`TrainConfig` field that has command-line metadata.

    ``groups`` maps a group name (``run``, ``model``, ``optimizer``, ``recording``,
    ``execution``) to an argument group already made (so the caller decides their
    order and may add its own options to them); missing ones are created. Every help
    line ends with the field's true default. Returns the groups.

    >>> p = argparse.ArgumentParser()
    >>> _ = add_config_arguments(p)
    >>> c = config_from_arguments(p.parse_args(["--steps", "5", "--dtype", "fp32", "--numerics", "compiled"]))
    >>> c.steps, c.precision, c.numerics, c.lr
    (5, 'fp32', 'compiled', 0.001)
    >>> config_from_arguments(p.parse_args(["--no-compile"])).numerics
    'eager'
    """
    groups = dict(groups or {})
    for f in dataclasses.fields(TrainConfig):
        cli = f.metadata.get("cli")
        if cli is None:
            continue
        group = groups.get(cli["group"]) or groups.setdefault(cli["group"], parser.add_argument_group(cli["group"]))
        flags = cli.get("flags") or (f"--{f.name.replace('_', '-')}",)
        shown = cli.get("shown", _shown(f.default))
        kwargs = {"dest": f.name, "default": f.default, "help": f"{cli['help']} (default: {shown})"}
        if isinstance(f.default, bool):  # a switch: the flag turns the default off (or on)
            kwargs["action"] = "store_false" if f.default else "store_true"
        else:
            kwargs["metavar"] = cli.get("metavar")
            kwargs["type"] = {int: int, float: float}.get(type(f.default), str)
        group.add_argument(*flags, **kwargs)
        for flag, value in cli.get("aliases", {}).items():  # an older switch that sets one value
            group.add_argument(flag, dest=f.name, default=f.default, action="store_const", const=value,
                               help=f"the same as {flags[0]} {value}")
    return groups


def _shown(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def config_from_arguments(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed arguments (fields without an option keep their default)."""
    names = [f.name for f in dataclasses.fields(TrainConfig) if "cli" in f.metadata]
    return TrainConfig(**{name: getattr(args, name) for name in names if hasattr(args, name)})
