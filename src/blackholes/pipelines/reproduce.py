"""``reproduce``: the whole black-hole experiment in one call, written up as one page.

Train a tiny byte-level model from one shared point and record every step
(:mod:`blackholes.training.loop`), scan the first and last embedding matrices for
black holes (:mod:`blackholes.analysis.groups`), check that the hole moves as one rigid
body (:mod:`blackholes.analysis.dynamics`), draw the plots, and write ``report.html`` (one
self-contained page: the PNGs are embedded) and ``report.md`` beside them.

>>> r = reproduce("demo", steps=2000)   # doctest: +SKIP
>>> r.report_html                       # doctest: +SKIP
PosixPath('demo/report.html')
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from blackholes.analysis.dynamics import finite_or_none, never_drawn_tokens
from blackholes.analysis.ids import format_bytes
from blackholes import defaults
from blackholes.errors import BlackholesError

if TYPE_CHECKING:
    from blackholes.analysis.density import DensityMap
    from blackholes.analysis.dynamics_result import DynamicsResult
    from blackholes.analysis.groups import ScanResult
    from blackholes.analysis.lifecycle import Census
    from blackholes.training.config import TrainConfig
    from blackholes.training.loop import TrainResult

# Default length of a reproduce run. The original ran 10,000 steps; DEFAULT_STEPS keeps
# the run (training + every analysis) under a minute on a 2-core machine while the
# learning rate still decays to zero, so the hole's freezing is part of the story.
DEFAULT_STEPS = defaults.REPRODUCE_STEPS

# The files a run writes into its folder (names relative to it).
FILES = {
    "recording": "recording.safetensors",
    "scan_initial": "scan_initial.json",
    "mask_initial": "mask_initial.safetensors",
    "scan_final": "scan_final.json",
    "mask_final": "mask_final.safetensors",
    "dynamics": "dynamics.json",
    "map": "plots/map_final.png",
    "summary": "reproduce.json",
    "report_md": "report.md",
    "report_html": "report.html",
}
# With --compare-numerics only: the same run trained with the other numerics.
OTHER_RECORDING = "recording_other_numerics.safetensors"


@dataclass
class Check:
    """One verified statement: what was expected, and whether the data agree."""

    name: str
    passed: bool
    detail: str

    def to_json(self) -> dict:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass
class ReproduceResult:
    """What :func:`reproduce` wrote and found.

    ``hole_tokens`` are the tokens sharing one vector with the never-seen bytes at
    the end of training (the black hole); ``answer`` is the report's opening text.
    """

    out_dir: Path
    files: dict[str, Path]
    config: dict
    command: str
    train: TrainResult
    initial_scan: ScanResult
    final_scan: ScanResult
    dynamics: DynamicsResult | None  # None when there was nothing to follow
    density: DensityMap
    never_seen: list[int]
    never_drawn: list[int]
    hole_tokens: list[int]
    frozen_from: int | None
    checks: list[Check]
    answer: list[str]
    versions: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    census: Census | None = None  # every group at every step
    numerics: str = "eager"  # the recipe's numerics (training.config.NUMERICS)
    numerics_comparison: dict | None = None  # the same run with the other numerics (--compare-numerics)

    @property
    def report_html(self) -> Path:
        return self.files["report_html"]

    @property
    def report_md(self) -> Path:
        return self.files["report_md"]

    @property
    def recording(self) -> Path:
        return self.files["recording"]

    def to_json(self) -> dict:
        return {
            "answer": self.answer,
            "config": self.config,
            "numerics": self.numerics,
            "numerics_comparison": self.numerics_comparison,
            "command": self.command,
            "versions": self.versions,
            "files": {k: str(p.relative_to(self.out_dir)) for k, p in self.files.items()},
            "never_seen": self.never_seen,
            "never_drawn": self.never_drawn,
            "hole_tokens": self.hole_tokens,
            "dead_tokens": len(self.hole_tokens),
            "frozen_from": self.frozen_from,
            "rigid_body": None if self.dynamics is None else bool(self.dynamics.rigid_body),
            "checks": [c.to_json() for c in self.checks],
            "train": {
                "steps_done": int(self.train.steps_done),
                "seconds": float(self.train.seconds),
                "final_loss": finite_or_none(self.train.final_loss),
                "interrupted": bool(self.train.interrupted),
            },
            "scan": {
                "initial": _scan_brief(self.initial_scan),
                "final": _scan_brief(self.final_scan),
            },
            "map": self.density.to_json(),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


# ----------------------------------------------------------------------------- run


def check_out_dir(out: str | os.PathLike, force: bool) -> Path:
    """The output folder, refusing a non-empty one unless ``force``.

    >>> check_out_dir("a-new-folder", force=False)
    PosixPath('a-new-folder')
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BlackholesError(f"--out must be a folder, but {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise BlackholesError(f"{out} already exists and is not empty; pass --force to overwrite it")
    return out


def reproduce(
    out: str | os.PathLike,
    *,
    corpus: str | os.PathLike | None = None,
    steps: int = DEFAULT_STEPS,
    sigma: float = 0.0,
    seed: int = 0,
    precision: str | None = None,
    init: str | None = None,
    dtype: str | None = None,
    force: bool = False,
    progress: bool = True,
    log=print,
    command: str | None = None,
    recipe: dict | None = None,
    numerics: str | None = None,
    compare_numerics: bool = False,
) -> ReproduceResult:
    """Train, record, scan, analyse and plot; write everything and ``report.html`` into ``out``.

    ``corpus`` None uses the package's own default corpus. ``precision`` is ``bf16`` (the
    default: weights and Adam state in bf16, as the original), ``fp32`` or ``bf16-mixed``;
    ``dtype`` is its older name. ``init`` is ``centre`` (default), ``unit`` or ``normal``.
    ``log`` receives one line per stage (``None`` for silence); ``progress`` shows the
    training and PCA bars. ``recipe`` overrides further
    :class:`~blackholes.training.config.TrainConfig` fields (e.g. ``{"vocab": 256}``).
    ``numerics`` is ``eager`` (the default, the reference) or ``compiled`` (torch.compile's
    rounding, a recipe of its own); ``compare_numerics`` also trains the same run with the
    other numerics and says whether the freeze and the holes are the recipe's or its rounding's.

    >>> r = reproduce("tiny-demo", steps=30, log=None, progress=False, recipe={"compile": False})
    >>> r.report_html, r.checks[0].passed
    (PosixPath('tiny-demo/report.html'), True)
    """
    made_out = not Path(out).exists()
    if numerics is not None:
        recipe = {**(recipe or {}), "numerics": numerics}
    run = _setup(out, corpus, steps, sigma, seed, precision, init, dtype, force, progress, log, command, recipe,
                 compare_numerics)
    made_plots = not (run.out / "plots").exists()
    (run.out / "plots").mkdir(parents=True, exist_ok=True)  # only once every setting is valid
    try:
        trained = _train(run)
        initial, final, meta = _scan(run)
        findings = _findings(run, trained, initial, final, meta)
        dyn, census, dyn_plots = _dynamics(run, trained, findings)
        dmap = _map(run, trained, final)
        comparison = _compare_numerics(run, trained, final, findings, dyn) if run.compare_numerics else None
        return _report(run, trained, initial, final, findings, dyn, census, dyn_plots, dmap, comparison)
    except BaseException:
        for made, folder in ((made_plots, run.out / "plots"), (made_out, run.out)):
            if made:  # a failed run leaves no empty folder behind that would make the retry need --force
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise


@dataclass
class _Run:
    """One reproduce run's settings and bookkeeping, handed from stage to stage."""

    out: Path
    files: dict[str, Path]
    config: TrainConfig
    corpus_path: Path
    command: str
    progress: bool
    say: object
    seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    compare_numerics: bool = False

    def stage(self, name: str):
        """Time a stage into ``seconds[name]``."""
        return _Timer(self.seconds, name)


class _Timer:
    def __init__(self, seconds: dict, name: str):
        self.seconds, self.name = seconds, name

    def __enter__(self):
        self.t = time.perf_counter()

    def __exit__(self, *exc):
        self.seconds[self.name] = time.perf_counter() - self.t


def _setup(out, corpus, steps, sigma, seed, precision, init, dtype, force, progress, log, command, recipe,
           compare_numerics=False) -> _Run:
    """Every setting checked, every output checked against the inputs; nothing written yet."""
    from blackholes.training.config import TrainConfig
    from blackholes.training.corpus import default_corpus_path
    from blackholes.training.limits import check_resources
    from blackholes.training.loop import prepare_corpus

    out = check_out_dir(out, force)
    if steps < 1:
        raise BlackholesError(f"--steps must be at least 1, got {steps}")
    if not (sigma >= 0 and np.isfinite(sigma)):
        raise BlackholesError(f"--sigma must be a finite number >= 0, got {sigma}")
    corpus_path = Path(corpus) if corpus is not None else default_corpus_path()
    files = {k: out / v for k, v in FILES.items()}
    _check_files(out, files, corpus_path, force)
    settings = {k: v for k, v in (("precision", precision), ("init", init), ("dtype", dtype)) if v is not None}
    try:
        config = TrainConfig(corpus=corpus if corpus is None else str(corpus), sigma=sigma, steps=steps, seed=seed,
                             **settings, **(recipe or {}))
    except TypeError as e:
        raise BlackholesError(f"unknown training setting: {e}") from None
    config.validate()
    corpus_data = prepare_corpus(config)  # a missing corpus, or a byte outside the vocabulary: nothing written
    check_resources(config, files["recording"], len(corpus_data.data))  # sizes the disk or memory cannot hold
    command = command or canonical_command(out, corpus, steps, sigma, seed, config.precision, recipe, config.init,
                                           config.numerics, compare_numerics)
    if compare_numerics:
        files["recording_other"] = out / OTHER_RECORDING
    return _Run(out, files, config, corpus_path, command, progress, log or (lambda *_: None),
                compare_numerics=compare_numerics)


def _train(run: _Run):
    """1. Train and record every step."""
    from blackholes.training.loop import train

    cfg = run.config
    run.say(f"[1/5] training {cfg.steps:,} steps (sigma={cfg.sigma:g}, seed={cfg.seed}, {cfg.precision}, "
            f"{cfg.numerics} numerics{'' if cfg.init == 'centre' else ', init ' + cfg.init}) on "
            f"{run.corpus_path.name} ...")
    with run.stage("train"):
        _remove_previous(run.out)  # --force: no file of an earlier run may survive to be mistaken for this one's
        trained = train(cfg, run.files["recording"], progress=run.progress)
    if trained.interrupted:  # Ctrl-C: train() kept the steps done so far; stop like any interrupted command
        from blackholes.errors import Stopped

        raise Stopped(trained.stopped_by, kept=f"interrupted after {trained.steps_done:,} steps: partial recording "
                      f"kept at {run.files['recording']}; no report written")
    run.say(f"      recorded {trained.steps_done:,} steps in {trained.seconds:.1f} s -> {run.files['recording']}")
    return trained


def _scan(run: _Run):
    """2. Black holes of the first and the last embedding matrix (and their JSON and masks)."""
    from blackholes.analysis.groups import scan
    from blackholes.io.recording import Recording

    run.say("[2/5] scanning the initial and final embedding matrices for black holes ...")
    with run.stage("scan"):
        rec = Recording(run.files["recording"])
        emb = rec.tensor("embeddings")
        results = []
        for which, index in (("initial", 0), ("final", -1)):
            result = scan(np.asarray(emb[index]), dtype=rec.dtype)
            result.source = f"{FILES['recording']}:embeddings[{'0' if index == 0 else '-1'}]"
            result.key = "embeddings"
            _write_json(run.files[f"scan_{which}"], result.to_json())
            result.save_mask(run.files[f"mask_{which}"])
            results.append(result)
    initial, final = results
    run.say(f"      initial: {_groups_line(initial)}; final: {_groups_line(final)}")
    return initial, final, rec.metadata


@dataclass
class _Findings:
    never_seen: list[int]
    never_drawn: list[int]
    hole: list[int]
    checks: list[Check]


def _findings(run: _Run, trained, initial, final, meta) -> _Findings:
    never_seen = sorted(int(t) for t in (meta.get("never_seen") or trained.never_seen or []))
    never_drawn = never_drawn_tokens(meta, never_seen) or []
    hole = _hole_tokens(final, never_seen + never_drawn)
    checks = _checks(run.config.sigma, initial, final, never_seen, never_drawn, hole, meta, final.shape[0])
    return _Findings(never_seen, never_drawn, hole, checks)


def _dynamics(run: _Run, trained, f: _Findings):
    """3. Follow the never-seen bytes through every recorded step; count every group at every step."""
    from blackholes.analysis.dynamics import analyze
    from blackholes.analysis.lifecycle import census_of_recording
    from blackholes.render.lifecycle import plot_census, plot_last_motion
    from blackholes.render.plots import plot_dynamics

    run.say("[3/5] following the never-seen bytes through every recorded step ...")
    # a hole needs two tokens: follow the never-seen bytes, or with fewer, every untouched byte
    followed = f.never_seen if len(f.never_seen) >= 2 else sorted(f.never_seen + f.never_drawn)
    dyn, census, plots = None, None, []
    if len(followed) < 2:
        run.files.pop("dynamics")
        run.say(f"      {len(followed)} untrained token(s): fewer than two, no hole to follow")
        return dyn, census, plots
    with run.stage("dynamics"):
        dyn = analyze(run.files["recording"], tokens=followed, steps=_sampled_steps(int(trained.steps_done)))
        census = census_of_recording(run.files["recording"], never_seen=f.never_seen or None)
        plots = [Path(p) for p in plot_dynamics(dyn, run.out / "plots")]
        plots += [plot_census(census, run.out / "plots" / "census.png"),
                  plot_last_motion(census, run.out / "plots" / "census_last_motion.png", f.hole)]
        _write_json(run.files["dynamics"], {**dyn.to_json(), "census": census.to_json()})
    return dyn, census, plots


def _sampled_steps(last: int) -> list[int]:
    """The steps the rigid-body analysis samples in a run of ``last`` steps."""
    from blackholes.analysis.dynamics import DEFAULT_STEPS as SAMPLED

    return sorted({s for s in SAMPLED if s <= last} | {last})


def _map(run: _Run, trained, final):
    """4. Density map of the final matrix, without and with the mask."""
    from blackholes.analysis.density import density_map
    from blackholes.render.plots import plot_density_map
    from blackholes.io.recording import Recording

    run.say("[4/5] drawing the density map of the final embedding matrix ...")
    with run.stage("map"):
        rec = Recording(run.files["recording"])
        has_holes = final.black_hole_tokens > 0  # no mask, no second panel: it would repeat the first
        dmap = density_map(np.asarray(rec.tensor("embeddings")[-1]), dtype=rec.dtype,
                           mask=final.mask if has_holes else None,
                           black_hole_id=final.black_hole_id if has_holes else None, progress=False)
        dmap.source, dmap.key = f"final embeddings (step {trained.steps_done:,})", "embeddings[-1]"
        plot_density_map(dmap, run.files["map"], title=f"Final embedding matrix after {trained.steps_done:,} steps")
    return dmap


def _compare_numerics(run: _Run, trained_here, final, f: _Findings, dyn) -> dict:
    """4b. The same run with the other numerics: do the freeze step and the holes stay?

    The holes are the recipe's when both rounding paths leave the same holes (as many groups, the
    same hole tokens); the freeze is the recipe's when, besides, both freeze the hole at the same
    step. Otherwise each is its rounding's.
    """
    import dataclasses

    from blackholes.analysis.groups import scan
    from blackholes.training.config import NUMERICS
    from blackholes.training.loop import train
    from blackholes.io.recording import Recording

    cfg = run.config
    other = dataclasses.replace(cfg, numerics=next(n for n in NUMERICS if n != cfg.numerics))
    run.say(f"[4b] the same run with {other.numerics} numerics, to tell the recipe from its rounding ...")
    with run.stage("compare_numerics"):
        trained = train(other, run.files["recording_other"], progress=run.progress)
        if trained.interrupted:  # stopped: no comparison from a part of a run, as _train stops without a report
            from blackholes.errors import Stopped

            raise Stopped(trained.stopped_by, kept=f"interrupted after {trained.steps_done:,} steps of the "
                                                   f"{other.numerics} run; no comparison and no report written")
        rec = Recording(run.files["recording_other"])
        final_other = scan(np.asarray(rec.tensor("embeddings")[-1]), dtype=rec.dtype)
        hole_other = _hole_tokens(final_other, f.never_seen + f.never_drawn)
        dyn_other = None
        if dyn is not None:
            from blackholes.analysis.dynamics import analyze

            dyn_other = analyze(run.files["recording_other"], tokens=list(dyn.untrained_tokens),
                                steps=_sampled_steps(int(trained.steps_done)))
        first = _first_difference(Recording(run.files["recording"]), rec)
    mine = {"frozen_from": _frozen_from(dyn), "holes": len(final.groups), "hole_tokens": len(f.hole),
            "final_loss": finite_or_none(trained_here.final_loss)}
    theirs = {"frozen_from": _frozen_from(dyn_other), "holes": len(final_other.groups),
              "hole_tokens": len(hole_other), "final_loss": finite_or_none(trained.final_loss)}
    same_holes = mine["holes"] == theirs["holes"] and sorted(f.hole) == hole_other
    same_freeze = mine["frozen_from"] == theirs["frozen_from"]
    return {cfg.numerics: mine, other.numerics: theirs, "first_difference_step": first,
            "freeze": "recipe" if same_freeze and same_holes else "rounding",
            "holes": "recipe" if same_holes else "rounding"}


def _first_difference(a, b) -> int | None:
    """The first recorded step at which the two recordings' embedding matrices differ (None: never)."""
    ea, eb = a.tensor("embeddings"), b.tensor("embeddings")
    for i in range(min(len(a), len(b))):
        if not np.array_equal(ea[i], eb[i]):
            return int(a.steps[i])
    return None


def _report(run: _Run, trained, initial, final, f: _Findings, dyn, census, dyn_plots, dmap,
            comparison=None) -> ReproduceResult:
    """5. reproduce.json, report.md and report.html."""
    from blackholes import __version__
    from blackholes.io.atomic import write_text
    from blackholes.render.reproduce_page import answer, document

    run.say("[5/5] writing the report ...")
    run.seconds["total"] = time.perf_counter() - run.started
    result = ReproduceResult(
        out_dir=run.out, files=run.files, config=_config_json(run.config, run.corpus_path), command=run.command,
        train=trained, initial_scan=initial, final_scan=final, dynamics=dyn, density=dmap,
        never_seen=f.never_seen, never_drawn=f.never_drawn, hole_tokens=f.hole, frozen_from=_frozen_from(dyn),
        checks=f.checks, answer=[], versions=versions(__version__), seconds=run.seconds, census=census,
        numerics=run.config.numerics, numerics_comparison=comparison,
    )
    result.answer = answer(result)
    plots = {"map": run.files["map"]}
    for path in dyn_plots:
        run.files[path.stem] = path
        plots[path.stem] = path
    _write_json(run.files["summary"], result.to_json())
    doc = document(result, plots)
    write_text(run.files["report_md"], doc.markdown())
    write_text(run.files["report_html"], doc.html())
    return result


def _previous_outputs(out: Path) -> list[Path]:
    """Every file a ``reproduce`` writes into ``out``: the only files ``--force`` may remove."""
    from blackholes.render.plots import dynamics_plot_paths

    census_plots = [out / "plots" / name for name in ("census.png", "census_last_motion.png")]
    return ([out / name for name in FILES.values()] + [out / OTHER_RECORDING] + dynamics_plot_paths(out / "plots")
            + census_plots)


def _check_files(out: Path, files: dict, corpus_path: Path, force: bool) -> None:
    """Before anything is written or removed: no output, and no file --force would remove, is the corpus."""
    from blackholes.io.paths import check_outputs

    outputs = _previous_outputs(out)
    stale = [p for p in outputs if p.exists()] if force else []
    inside = [p for p in outputs if p.parent.is_dir()]  # plots/ may not exist yet: checked when it does
    check_outputs(inside, inputs=[corpus_path], removals=stale)


def _remove_previous(out: Path) -> None:
    """Delete the files an earlier ``reproduce`` wrote into ``out`` (only those names)."""
    for path in _previous_outputs(out):
        path.unlink(missing_ok=True)


def canonical_command(out, corpus, steps, sigma, seed, precision, recipe=None, init="centre",
                      numerics="eager", compare_numerics=False) -> str:
    """The ``blackholes reproduce`` command line with every setting spelled out.

    Settings the command line cannot express (other ``recipe`` fields) follow as a comment.
    """
    parts = ["blackholes", "reproduce"]
    if corpus is not None:
        parts += ["--corpus", str(corpus)]
    parts += ["--steps", str(steps), "--sigma", f"{sigma:g}", "--seed", str(seed), "--precision", precision]
    if init != "centre":
        parts += ["--init", init]
    parts += ["--numerics", numerics]  # always spelled out: the rounding path is part of the recipe
    if compare_numerics:
        parts += ["--compare-numerics"]
    extra = {k: v for k, v in (recipe or {}).items() if k not in ("precision", "dtype", "init", "numerics", "compile")}
    if "vocab" in extra:
        parts += ["--vocab", str(extra.pop("vocab"))]
    parts += ["--out", str(out)]
    text = shlex.join(parts)
    if extra:
        text += "  # from Python, with recipe=" + json.dumps(extra, sort_keys=True)
    return text


def versions(blackholes_version: str) -> dict[str, str]:
    """Versions of everything that shaped the numbers."""
    import matplotlib
    import torch

    return {
        "blackholes": blackholes_version,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "matplotlib": matplotlib.__version__,
        "platform": platform.platform(),
    }


# ------------------------------------------------------------------ the findings


def _hole_tokens(final, expected: list[int]) -> list[int]:
    """Tokens of every final group that holds an expected token (usually exactly one group)."""
    ids = np.asarray(final.black_hole_id)
    hit = sorted({int(ids[t]) for t in expected if ids[t] != 0})
    return sorted(int(t) for t in np.flatnonzero(np.isin(ids, hit))) if hit else []


def _checks(sigma, initial, final, never_seen, never_drawn, hole, meta, vocab) -> list[Check]:
    out = []
    ids = np.asarray(final.black_hole_id)
    if sigma == 0:
        one = len(initial.groups) == 1 and initial.groups[0].size == vocab
        out.append(Check(
            "every row starts at one point", one,
            f"initial matrix: {initial.unique_vectors} unique vector(s), "
            f"largest group {initial.groups[0].size if initial.groups else 0} of {vocab} tokens",
        ))
        expected = never_seen + never_drawn
        if expected:
            holes = {int(ids[t]) for t in expected}
            together = len(holes) == 1 and 0 not in holes
            out.append(Check(
                "never-seen and never-drawn bytes end as one black hole", together,
                f"{len(never_seen)} never-seen + {len(never_drawn)} never-drawn bytes "
                + ("share one final vector" if together else f"sit in final groups {sorted(holes)} (0 = alone)"),
            ))
            extra = sorted(set(hole) - set(expected))
            out.append(Check(
                "no byte the run drew stays in the hole", not extra,
                "none" if not extra else f"drawn but still in the hole: {format_bytes(extra)}",
            ))
    else:
        apart = initial.black_hole_tokens == 0
        out.append(Check(
            f"with sigma = {sigma:g} every row starts apart", apart,
            f"initial matrix: {initial.unique_vectors} unique vectors of {vocab}",
        ))
    counts_ok = isinstance(meta.get("input_counts"), list)
    out.append(Check(
        "recording is complete and carries its counts", meta.get("complete") in (True, "true") and counts_ok,
        f"complete={meta.get('complete')!r}, input/target counts {'present' if counts_ok else 'missing'}",
    ))
    return out


def _frozen_from(dyn) -> int | None:
    """The step from which the hole never moved again (update exactly zero at every later step)."""
    if dyn is None:
        return None
    frac = np.asarray(dyn.series.get("frozen_fraction", []), dtype=np.float64)
    steps = np.asarray(dyn.series.get("step", []))
    if frac.size < 2 or frac[-1] != 1.0:
        return None
    moving = np.flatnonzero(~(frac[1:] == 1.0)) + 1  # index 0 has no update
    first = moving[-1] + 1 if moving.size else 1
    return int(steps[first])


def _groups_line(result) -> str:
    if not result.groups:
        return f"no black holes ({result.unique_vectors} unique vectors)"
    sizes = ", ".join(str(g.size) for g in result.groups[:5])
    more = "" if len(result.groups) <= 5 else ", ..."
    return f"{len(result.groups)} black hole(s) of {sizes}{more} tokens"


def _config_json(config, corpus_path: Path) -> dict:
    from dataclasses import asdict, is_dataclass

    raw = asdict(config) if is_dataclass(config) else dict(vars(config))
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in raw.items()}
    out["corpus_path"] = str(corpus_path)
    return json.loads(json.dumps(out, default=str))


def _scan_brief(s) -> dict:
    return {
        "unique_vectors": int(s.unique_vectors),
        "black_hole_tokens": int(s.black_hole_tokens),
        "group_sizes": [int(g.size) for g in s.groups],
    }


def _write_json(path: Path, obj) -> None:
    from blackholes.io.atomic import write_json

    write_json(path, obj)
