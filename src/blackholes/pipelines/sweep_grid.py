"""The grid of a sweep: which train options vary, their values, and every run's config.

A grid names, for any ``train`` option, a list of values (``--sigma 0,1e-4,1e-3``, ``--seeds
0-7``, ``--sigma log:1e-6:1e-1:25``, ``--precision bf16,bf16-mixed``); the sweep trains the
Cartesian product, run ids in grid order, the last swept option varying fastest. A grid is
sized from its parameters (:func:`grid_bound`) before any range is expanded, so a grid of a
million runs asks for ``--yes`` at once instead of working for minutes first.

>>> Grid.from_options({"sigma": "0,1e-3", "seed": "0-2"}).size
6
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.training.config import INITS, NUMERICS, SCHEDULES, TrainConfig
from blackholes.training.precision import PRECISIONS

CONFIRM_RUNS = 10_000  # a larger grid needs --yes (or a yes on the terminal)
MAX_VALUES = 10_000_000  # values one option may take at most
FLOAT32_MAX = float(np.finfo(np.float32).max)
FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
FIXED_ONLY = ("every", "optimizer_state", "compile", "threads")
SWEEPABLE = tuple(n for n, f in FIELDS.items() if "cli" in f.metadata and n not in FIXED_ONLY)
CHOICES = {"precision": tuple(PRECISIONS), "init": INITS, "schedule": SCHEDULES, "numerics": NUMERICS}
ALIASES = {"seeds": "seed", "dtype": "precision", "sigmas": "sigma"}


def parse_values(name: str, spec) -> list:
    """The values one option takes in a grid: a value, a list of values, or a text of items
    separated by commas. An item is a value, or a range:

    * integers: ``A-B`` (every integer from A to B), e.g. ``--seeds 0-7``;
    * numbers: ``log:START:STOP:N`` (N values, geometric) or ``lin:START:STOP:N`` (evenly
      spaced), both ends included; ``START:STOP:N`` and ``START:STOP:N:log`` are the same ranges
      written as ``--no-train`` writes them. Values are kept to 6 significant digits, so each
      can be typed back into ``blackholes train``; integer fields round them.

    Order is kept; a value given twice counts once.

    >>> parse_values("sigma", "0,log:1e-4:1e-2:3")
    [0.0, 0.0001, 0.001, 0.01]
    >>> parse_values("seed", "0-3,7"), parse_values("precision", "bf16,bf16-mixed"), parse_values("lr", 0.01)
    ([0, 1, 2, 3, 7], ['bf16', 'bf16-mixed'], [0.01])
    """
    name = ALIASES.get(name, name)
    flag = "--" + name.replace("_", "-")
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    values = []
    for item in items:
        parts = [p.strip() for p in item.split(",")] if isinstance(item, str) else [item]
        for part in parts:
            if part != "":
                values.extend(_item_values(name, flag, part))
    if not values:
        raise BlackholesError(f"{flag}: the grid is empty (no values in {spec!r})")
    return list(dict.fromkeys(values))  # order kept, duplicates dropped, in linear time


def count_values(name: str, spec) -> int:
    """How many values ``spec`` names for one option, read from its ranges' parameters without
    expanding them (duplicates counted: an upper bound). Malformed items count 1 here and are
    refused by :func:`parse_values`.

    >>> count_values("sigma", "0,lin:0:1:1000000"), count_values("seed", "0-99,7")
    (1000001, 101)
    """
    name = ALIASES.get(name, name)
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    total = 0
    for item in items:
        for part in ([p.strip() for p in item.split(",")] if isinstance(item, str) else [item]):
            if not isinstance(part, str) or part == "" or name not in FIELDS or _kind(name) in ("choice", "path"):
                total += part != ""
                continue
            fields = part.split(":")
            if len(fields) > 1:
                count = fields[-2] if fields[-1] in ("log", "lin") else fields[-1]
                total += int(count) if count.strip().isdigit() else 1
            elif re.fullmatch(r"\d+-\d+", part):
                a, b = (int(x) for x in part.split("-"))
                total += max(1, b - a + 1)
            else:
                total += 1
    return total


def grid_bound(options: dict) -> int:
    """The most runs the grid ``options`` can have (the product of :func:`count_values`), in
    time linear in the options' text: what ``--yes`` is asked for before anything is expanded.

    >>> grid_bound({"sigma": "lin:0:1:1000000", "seed": "0-7", "steps": 100})
    8000000
    """
    bound = 1
    for raw, spec in options.items():
        name = ALIASES.get(raw, raw)
        if spec is not None and name not in FIXED_ONLY:
            bound *= max(1, count_values(name, spec))
    return bound


def _item_values(name: str, flag: str, part) -> list:
    kind = _kind(name)
    if kind == "choice":
        if part not in CHOICES[name]:
            raise BlackholesError(f"{flag}: {part!r} is not one of {', '.join(CHOICES[name])}")
        return [part]
    if kind == "path":
        return [str(part)]
    if not isinstance(part, str):
        return [_number(kind, flag, part)]
    fields = part.split(":")
    if len(fields) > 1:
        return [_number(kind, flag, v) for v in _range(flag, fields, part)]
    if kind == "int" and re.fullmatch(r"\d+-\d+", part):
        a, b = (int(x) for x in part.split("-"))
        if a > b:
            raise BlackholesError(f"{flag}: the range {part} runs backwards (write {b}-{a})")
        if b - a >= MAX_VALUES:
            raise BlackholesError(f"{flag}: the range {part} has {b - a + 1:,} values; that is not a grid")
        return list(range(a, b + 1))
    try:
        return [_number(kind, flag, int(part) if kind == "int" else float(part))]
    except ValueError:
        hint = "integers and ranges such as 0-7" if kind == "int" else "numbers and ranges such as log:1e-6:1e-1:25"
        raise BlackholesError(f"{flag}: cannot read {part!r}; give {hint}") from None


def _kind(name: str) -> str:
    if name in CHOICES:
        return "choice"
    if name == "corpus":
        return "path"
    default = FIELDS[name].default
    return "int" if isinstance(default, int) and not isinstance(default, bool) else "float"


def _range(flag: str, fields: list[str], part: str) -> list[float]:
    """``log:A:B:N`` / ``lin:A:B:N`` / ``A:B:N`` / ``A:B:N:log`` as floats."""
    how = "lin"
    if fields[0] in ("log", "lin"):
        how, fields = fields[0], fields[1:]
    elif len(fields) == 4 and fields[3] in ("log", "lin"):
        how, fields = fields[3], fields[:3]
    try:
        if len(fields) != 3:
            raise ValueError
        start, stop, count = float(fields[0]), float(fields[1]), int(fields[2])
    except ValueError:
        raise BlackholesError(f"{flag}: cannot read the range {part!r}; write log:START:STOP:N or "
                              "lin:START:STOP:N") from None
    if count < 1 or count > MAX_VALUES:
        raise BlackholesError(f"{flag}: the range {part!r} must have between 1 and {MAX_VALUES:,} values")
    if how == "log":
        if not (start > 0 and stop > 0):
            raise BlackholesError(f"{flag}: a log range needs START > 0 and STOP > 0, got {part!r}")
        values = np.geomspace(start, stop, count)
    else:
        values = np.linspace(start, stop, count)
    return [float(f"{v:.6g}") for v in values]


def _number(kind: str, flag: str, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise BlackholesError(f"{flag}: {value!r} is not a number")
    if kind == "int":
        if isinstance(value, (float, np.floating)) and not (math.isfinite(value) and value == round(value)):
            value = round(value) if math.isfinite(value) else value
        if not isinstance(value, (int, np.integer)) and not (isinstance(value, float) and math.isfinite(value)):
            raise BlackholesError(f"{flag}: {value!r} is not an integer")
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        raise BlackholesError(f"{flag}: {value!r} is not a finite number")
    if abs(value) > FLOAT32_MAX:  # runs train in float32 at most: such a value is infinite there
        raise BlackholesError(f"{flag}: {value:g} is beyond float32's range (±{FLOAT32_MAX:.4g}), in which runs train")
    return value


@dataclass
class Grid:
    """Which options vary (``swept``: name -> values, in ``TrainConfig`` order) and the rest (``fixed``).

    Runs are the Cartesian product, the last swept option varying fastest; run ids count from 0.

    >>> g = Grid.from_options({"sigma": "0,1e-3", "seed": "0-2", "steps": 100})
    >>> g.size, g.swept_values(4), g.config(4).steps
    (6, {'sigma': 0.001, 'seed': 1}, 100)
    """

    swept: dict[str, list]
    fixed: dict[str, object]

    @classmethod
    def from_options(cls, options: dict) -> Grid:
        """A grid from option values as :func:`parse_values` reads them (None: the default)."""
        given: dict[str, list] = {}
        for raw, spec in options.items():
            if spec is None:
                continue
            name = ALIASES.get(raw, raw)
            if name not in FIELDS or name == "dtype":
                raise BlackholesError(f"--{raw.replace('_', '-')} is not a train option")
            if name in given:
                raise BlackholesError(f"--{name.replace('_', '-')} is given twice (also as --{raw.replace('_', '-')})")
            given[name] = _fixed_value(name, spec) if name in FIXED_ONLY else parse_values(name, spec)
        swept = {n: given[n] for n in FIELDS if n in given and n not in FIXED_ONLY and len(given[n]) > 1}
        fixed = {}
        for n, f in FIELDS.items():
            if n == "dtype" or n in swept:
                continue
            value = given.get(n, [f.default] if n not in FIXED_ONLY else f.default)
            fixed[n] = value[0] if n not in FIXED_ONLY else value
        return cls(swept, fixed)

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.swept.values())

    def swept_values(self, run: int) -> dict:
        """The swept options of run ``run`` (the last option varies fastest)."""
        out = {}
        for name in reversed(list(self.swept)):
            values = self.swept[name]
            run, i = divmod(run, len(values))
            out[name] = values[i]
        return dict(reversed(list(out.items())))

    def config(self, run: int) -> TrainConfig:
        """The ``TrainConfig`` of run ``run`` (not yet validated)."""
        return TrainConfig(**{**self.fixed, **self.swept_values(run)})

    def to_json(self) -> dict:
        return {"swept": self.swept, "fixed": self.fixed, "runs": self.size}


def _fixed_value(name: str, spec):
    """A recording or execution setting: one value, never a list."""
    flag = "--" + name.replace("_", "-")
    if isinstance(spec, bool):
        return spec
    text = ",".join(str(s) for s in spec) if isinstance(spec, (list, tuple)) else str(spec)
    if any(sep in text for sep in (",", ":")) or re.fullmatch(r"\d+-\d+", text):
        raise BlackholesError(f"{flag} cannot be swept (it is a recording or execution setting, the same for "
                              f"every run): give one value, not {text!r}")
    if isinstance(FIELDS[name].default, bool):
        raise BlackholesError(f"{flag} is a switch: give it without a value")
    try:
        return int(text)
    except ValueError:
        raise BlackholesError(f"{flag}: cannot read {text!r}; give one integer") from None


def parse_run_ids(spec, runs: int) -> set[int]:
    """``--record``: ``none``, ``all``, or run ids and ranges (``0,3,8-11``) inside the grid.

    >>> sorted(parse_run_ids("0,2-3", 5)), parse_run_ids("none", 5), len(parse_run_ids("all", 5))
    ([0, 2, 3], set(), 5)
    >>> parse_run_ids("7", 5)
    Traceback (most recent call last):
    ...
    blackholes.errors.BlackholesError: --record: run 7 is not in the grid (runs 0-4)
    """
    if spec is None:
        return set()
    if not isinstance(spec, str):
        ids = {int(s) for s in spec}
    elif spec.strip() in ("", "none"):
        return set()
    elif spec.strip() == "all":
        return set(range(runs))
    else:
        ids = set()
        for part in (p.strip() for p in spec.split(",")):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise BlackholesError(f"--record: cannot read {part!r}; give none, all, or run ids such as 0,3,8-11")
            a, b = int(m[1]), int(m[2] or m[1])
            if a > b:
                raise BlackholesError(f"--record: the range {part} runs backwards")
            bad = a if a >= runs else b if b >= runs else None
            if bad is not None:
                raise BlackholesError(f"--record: run {bad} is not in the grid (runs 0-{runs - 1})")
            ids.update(range(a, b + 1))
    bad = sorted(i for i in ids if not 0 <= i < runs)
    if bad:
        raise BlackholesError(f"--record: run {bad[0]} is not in the grid (runs 0-{runs - 1})")
    return ids
