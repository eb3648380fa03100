"""``reproduce``: the whole black-hole experiment in one call, written up as one page.

Train a tiny byte-level model from one shared point and record every step
(:mod:`blackholes.train`), scan the first and last embedding matrices for
black holes (:mod:`blackholes.scan`), check that the hole moves as one rigid
body (:mod:`blackholes.dynamics`), draw the plots, and write ``report.html`` (one
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

import numpy as np

from blackholes.analysis.dynamics import finite_or_none, never_drawn_tokens
from blackholes.render.dynamics import format_bytes
from blackholes.errors import BlackholesError
from blackholes.render.page import Document
from blackholes.training.recording import decode_metadata

# Default length of a reproduce run. The original ran 10,000 steps; DEFAULT_STEPS keeps
# the run (training + every analysis) under a minute on a 2-core machine while the
# learning rate still decays to zero, so the hole's freezing is part of the story.
DEFAULT_STEPS = 2000

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
    train: object  # blackholes.train.TrainResult
    initial_scan: object  # blackholes.scan.ScanResult
    final_scan: object
    dynamics: object | None  # blackholes.dynamics.DynamicsResult (None when there was nothing to follow)
    density: object  # blackholes.density.DensityMap
    never_seen: list[int]
    never_drawn: list[int]
    hole_tokens: list[int]
    frozen_from: int | None
    checks: list[Check]
    answer: list[str]
    versions: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)

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
    dtype: str = "bf16",
    force: bool = False,
    progress: bool = True,
    log=print,
    command: str | None = None,
    recipe: dict | None = None,
) -> ReproduceResult:
    """Train, record, scan, analyse and plot; write everything and ``report.html`` into ``out``.

    ``corpus`` None uses the package's own default corpus. ``log`` receives one line
    per stage (``None`` for silence); ``progress`` shows the training and PCA bars.
    ``recipe`` overrides further :class:`~blackholes.train.TrainConfig` fields
    (e.g. ``{"vocab": 256}``).

    >>> r = reproduce("tiny-demo", steps=30, log=None, progress=False, recipe={"compile": False})
    >>> r.report_html, r.checks[0].passed
    (PosixPath('tiny-demo/report.html'), True)
    """
    from blackholes import __version__
    from blackholes.training.loop import TrainConfig, default_corpus_path, load_corpus, train

    say = log or (lambda *_: None)
    out = check_out_dir(out, force)
    if steps < 1:
        raise BlackholesError(f"--steps must be at least 1, got {steps}")
    if not (sigma >= 0 and np.isfinite(sigma)):
        raise BlackholesError(f"--sigma must be a finite number >= 0, got {sigma}")
    corpus_path = Path(corpus) if corpus is not None else default_corpus_path()
    if not corpus_path.is_file():
        raise BlackholesError(f"no such corpus file: {corpus_path}")
    files = {k: out / v for k, v in FILES.items()}
    _check_files(out, files, corpus_path, force)
    try:
        config = TrainConfig(corpus=corpus if corpus is None else str(corpus), sigma=sigma, steps=steps, seed=seed,
                             dtype=dtype, **(recipe or {}))
    except TypeError as e:
        raise BlackholesError(f"unknown training setting: {e}") from None
    config.validate()
    load_corpus(config)  # a byte outside the vocabulary fails here, before anything is written
    made_plots = not (out / "plots").exists()
    (out / "plots").mkdir(parents=True, exist_ok=True)  # only once every setting is valid
    try:
        return _run(out, files, config, corpus_path, command, corpus, steps, sigma, seed, dtype, recipe,
                    progress, say)
    except BaseException:
        if made_plots:  # a failed run leaves no empty plots/ that would make the retry need --force
            with contextlib.suppress(OSError):
                (out / "plots").rmdir()
        raise


def _run(out, files, config, corpus_path, command, corpus, steps, sigma, seed, dtype, recipe, progress, say):
    from blackholes import __version__
    from blackholes.training.loop import train

    command = command or canonical_command(out, corpus, steps, sigma, seed, dtype, recipe)
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()

    # 1. train and record
    say(f"[1/5] training {steps:,} steps (sigma={sigma:g}, seed={seed}, {dtype}) on {corpus_path.name} ...")
    t = time.perf_counter()
    _remove_previous(out)  # --force: no file of an earlier run may survive to be mistaken for this one's
    trained = train(config, files["recording"], progress=progress)
    seconds["train"] = time.perf_counter() - t
    if trained.interrupted:  # Ctrl-C: train() kept the steps done so far; stop like any interrupted command
        import sys

        print(f"interrupted after {trained.steps_done:,} steps: partial recording kept at {files['recording']}; "
              "no report written", file=sys.stderr)
        raise KeyboardInterrupt
    say(f"      recorded {trained.steps_done:,} steps in {trained.seconds:.1f} s -> {files['recording']}")

    # 2. scan the first and last embedding matrices
    say("[2/5] scanning the initial and final embedding matrices for black holes ...")
    t = time.perf_counter()
    from blackholes.analysis.groups import scan
    from blackholes.io.safetensors import open_tensor, read_header

    header = read_header(files["recording"])
    emb = open_tensor(files["recording"], "embeddings", header)
    emb_dtype = header.tensors["embeddings"].dtype
    meta = decode_metadata(header.metadata)
    initial = scan(np.asarray(emb[0]), dtype=emb_dtype)
    final = scan(np.asarray(emb[-1]), dtype=emb_dtype)
    for which, result in (("initial", initial), ("final", final)):
        result.source = f"{FILES['recording']}:embeddings[{'0' if which == 'initial' else '-1'}]"
        result.key = "embeddings"
        _write_json(files[f"scan_{which}"], result.to_json())
        result.save_mask(files[f"mask_{which}"])
    seconds["scan"] = time.perf_counter() - t

    never_seen = sorted(int(t) for t in (meta.get("never_seen") or trained.never_seen or []))
    never_drawn = never_drawn_tokens(meta, never_seen) or []
    hole = _hole_tokens(final, never_seen + never_drawn)
    checks = _checks(sigma, initial, final, never_seen, never_drawn, hole, meta, emb.shape[1])
    say(f"      initial: {_groups_line(initial)}; final: {_groups_line(final)}")

    # 3. dynamics
    say("[3/5] following the never-seen bytes through every recorded step ...")
    t = time.perf_counter()
    from blackholes.analysis.dynamics import analyze
    from blackholes.render.plots import plot_density_map, plot_dynamics

    # a hole needs two tokens: follow the never-seen bytes, or with fewer, every untouched byte
    followed = never_seen if len(never_seen) >= 2 else sorted(never_seen + never_drawn)
    dyn = None
    dyn_plots: list[Path] = []
    if len(followed) >= 2:
        last = int(trained.steps_done)
        sample = sorted({s for s in (0, 1, 2, 10, 100, 1000, 10000) if s <= last} | {last})
        dyn = analyze(files["recording"], tokens=followed, steps=sample)
        _write_json(files["dynamics"], dyn.to_json())
        dyn_plots = [Path(p) for p in plot_dynamics(dyn, out / "plots")]
    else:
        files.pop("dynamics")
        say(f"      {len(followed)} untrained token(s): fewer than two, no hole to follow")
    seconds["dynamics"] = time.perf_counter() - t
    frozen_from = _frozen_from(dyn)

    # 4. density map of the final matrix, without and with the mask
    say("[4/5] drawing the density map of the final embedding matrix ...")
    t = time.perf_counter()
    from blackholes.analysis.density import density_map

    has_holes = final.black_hole_tokens > 0  # no mask, no second panel: it would repeat the first
    dmap = density_map(np.asarray(emb[-1]), dtype=emb_dtype, mask=final.mask if has_holes else None,
                       black_hole_id=final.black_hole_id if has_holes else None, progress=False)
    dmap.source, dmap.key = f"final embeddings (step {trained.steps_done:,})", "embeddings[-1]"
    plot_density_map(dmap, files["map"], title=f"Final embedding matrix after {trained.steps_done:,} steps")
    seconds["map"] = time.perf_counter() - t

    # 5. the report
    say("[5/5] writing the report ...")
    seconds["total"] = time.perf_counter() - t_all
    result = ReproduceResult(
        out_dir=out,
        files=files,
        config=_config_json(config, corpus_path),
        command=command,
        train=trained,
        initial_scan=initial,
        final_scan=final,
        dynamics=dyn,
        density=dmap,
        never_seen=never_seen,
        never_drawn=never_drawn,
        hole_tokens=hole,
        frozen_from=frozen_from,
        checks=checks,
        answer=[],
        versions=versions(__version__),
        seconds=seconds,
    )
    result.answer = _answer(result)
    plots = {"map": files["map"]}
    for p in dyn_plots:
        key = p.stem
        files[key] = p
        plots[key] = p
    _write_json(files["summary"], result.to_json())
    doc = _document(result, plots)
    from blackholes.io.atomic import write_text

    write_text(files["report_md"], doc.markdown())
    write_text(files["report_html"], doc.html())
    return result


def _previous_outputs(out: Path) -> list[Path]:
    """Every file a ``reproduce`` writes into ``out``: the only files ``--force`` may remove."""
    from blackholes.render.plots import dynamics_plot_paths

    return [out / name for name in FILES.values()] + dynamics_plot_paths(out / "plots")


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


def canonical_command(out, corpus, steps, sigma, seed, dtype, recipe=None) -> str:
    """The ``blackholes reproduce`` command line with every setting spelled out.

    Settings the command line cannot express (other ``recipe`` fields) follow as a comment.
    """
    parts = ["blackholes", "reproduce"]
    if corpus is not None:
        parts += ["--corpus", str(corpus)]
    parts += ["--steps", str(steps), "--sigma", f"{sigma:g}", "--seed", str(seed), "--dtype", dtype]
    extra = dict(recipe or {})
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


def _answer(r: ReproduceResult) -> list[str]:
    """The plain-language opening: how many dead tokens, one body or not, when it freezes."""
    V = int(r.final_scan.shape[0])
    steps = int(r.train.steps_done)
    lines = []
    ns, nd = r.never_seen, r.never_drawn
    if r.hole_tokens:
        parts = [f"{len(ns)} bytes that never occur in the corpus"] if ns else []
        if nd:
            parts.append(f"{len(nd)} rare byte{'s' if len(nd) != 1 else ''} the run never drew "
                         f"({_code_tokens(nd)})")
        extra = sorted(set(r.hole_tokens) - set(ns) - set(nd))
        if extra:
            parts.append(f"{len(extra)} byte(s) drawn but never pulled apart ({_code_tokens(extra)})")
        lines.append(
            f"**{len(r.hole_tokens)} of {V} tokens are dead**: after {steps:,} training steps they still share "
            f"one bit-identical embedding vector — a black hole made of {' and '.join(parts)}."
        )
    elif r.config["sigma"] > 0:
        lines.append(
            f"**No black hole**: with sigma = {r.config['sigma']:g} every row started at its own point, and after "
            f"{steps:,} steps {r.final_scan.black_hole_tokens} of {V} tokens share a vector."
        )
    else:
        lines.append(f"**No black hole** after {steps:,} steps: every token was drawn and pulled apart.")
    others = [g for g in r.final_scan.groups if not set(g.token_ids) & set(r.hole_tokens)]
    if others:
        shown = "; ".join(_code_tokens(g.token_ids) for g in others[:5])
        lines.append(f"Besides, {len(others)} smaller group{'s' if len(others) != 1 else ''} of drawn bytes "
                     f"still share{'s' if len(others) == 1 else ''} a vector: {shown}.")
    d = r.dynamics
    if d is not None:
        n = len(d.recorded_steps)
        k = len(d.untrained_tokens)
        who = _followed_words(d.untrained_tokens, r.never_seen)
        if d.rigid_body:
            tail = ""
            if d.never_drawn is not None and r.never_seen and r.never_drawn:
                stays = d.never_drawn.get("stays_in_hole")
                tail = (f"; the {len(r.never_drawn)} never-drawn bytes stay with them at every step" if stays
                        else f"; the {len(r.never_drawn)} never-drawn bytes do not stay with them at every step")
            lines.append(
                f"**They move as one body**: at every one of the {n:,} recorded steps {who} have bit-for-bit "
                f"identical logits, gradients and positions — same point, same score, same gradient, same "
                f"update{tail}."
            )
        else:
            fd = d.first_divergence
            names = {"logits": "logits", "grads": "gradients", "positions": "positions"}
            broken = ", ".join(f"{names.get(q, q)} differ from step {s:,}" for q, s in fd.items() if s is not None)
            lines.append(f"**They do not move as one body**: for {who}, {broken or d.verdict}.")
    if d is not None and r.hole_tokens:
        frz = d.freeze
        if r.frozen_from is not None:
            lines.append(
                f"**The hole freezes from step {r.frozen_from:,}**: from then on its update is too small to "
                f"change any bit of its {d.dtype} coordinates, so it never moves again "
                f"({frz.get('frozen_count', 0):,} of {n - 1:,} steps frozen in all)."
            )
        elif frz.get("first_frozen") is not None:
            lines.append(
                f"**The hole never freezes for good**: its update is exactly zero at {frz['frozen_count']:,} of "
                f"{n - 1:,} steps (first at step {frz['first_frozen']:,}), but it still moves at the last step."
            )
        else:
            lines.append("**The hole never freezes**: it moves at every recorded step.")
    failed = [c for c in r.checks if not c.passed]
    if failed:
        lines.append("**Attention** — these expectations did not hold: " + "; ".join(c.name for c in failed) + ".")
    return lines


def _followed_words(followed: list[int], never_seen: list[int]) -> str:
    """How to name the bytes dynamics followed: never seen, never drawn, or some of each."""
    seen_not = set(never_seen)
    n_seen = sum(t in seen_not for t in followed)
    n_drawn = len(followed) - n_seen  # the rest: in the corpus but never drawn
    if n_drawn == 0:
        return f"the {len(followed)} never-seen bytes"
    if n_seen == 0:
        return f"the {len(followed)} never-drawn bytes"
    return f"the {len(followed)} untouched bytes ({n_seen} never seen, {n_drawn} never drawn)"


# ------------------------------------------------------------------ rendering


def _document(r: ReproduceResult, plots: dict[str, Path]) -> Document:
    cfg = r.config
    doc = Document("Black-hole tokens: a reproduction", r.out_dir)
    start = ("every embedding row starting at one shared point" if cfg["sigma"] == 0
             else "every embedding row starting at its own point, scattered around one shared centre")
    doc.para(
        f"A {cfg['layers']}-layer byte-level GPT (width {cfg['width']}) trained for {int(r.train.steps_done):,} steps on "
        f"`{Path(cfg['corpus_path']).name}` with {start} "
        f"(sigma = {cfg['sigma']:g}, seed {cfg['seed']}, {cfg['dtype']}). Every step was recorded and analysed "
        "exactly: identity means bit-for-bit identical rows."
    )
    doc.heading("Answer")
    doc.bullets(r.answer)

    doc.heading("Evidence")
    doc.heading("Checks", 3)
    doc.table(["expectation", "holds", "detail"], [[c.name, "yes" if c.passed else "**NO**", c.detail]
                                                   for c in r.checks])

    doc.heading("Black holes in the embedding matrix (scan)", 3)
    rows = []
    for label, s in (("initial (step 0)", r.initial_scan), (f"final (step {int(r.train.steps_done):,})", r.final_scan)):
        sizes = ", ".join(str(g.size) for g in s.groups[:8]) + (" ..." if len(s.groups) > 8 else "")
        rows.append([label, f"{s.shape[0]} × {s.shape[1]} {s.dtype}", s.unique_vectors, len(s.groups),
                     s.black_hole_tokens, sizes or "–"])
    doc.table(["matrix", "shape", "unique vectors", "groups", "black-hole tokens", "group sizes"], rows)
    doc.table(
        ["token set", "count", "bytes"],
        [
            ["never seen in the corpus (`never_seen`)", len(r.never_seen), format_bytes(r.never_seen) or "–"],
            ["in the corpus but never drawn (input and target counts 0)", len(r.never_drawn),
             format_bytes(r.never_drawn) or "–"],
            ["the final black hole", len(r.hole_tokens), format_bytes(r.hole_tokens) or "–"],
        ],
    )

    d = r.dynamics
    if d is not None:
        doc.heading("Does the hole move as one body? (dynamics, every recorded step)", 3)
        rows = []
        for q, label in (("logits", "logits"), ("grads", "gradients"), ("positions", "positions")):
            t_ident = d.trained_identical_all_steps.get(q)
            t_first = d.trained_first_divergence.get(q)
            rows.append([
                label,
                "yes" if d.identical_all_steps[q] else "no",
                "never" if d.first_divergence[q] is None else f"step {d.first_divergence[q]:,}",
                "–" if t_ident is None else ("yes" if t_ident else "no"),
                "–" if t_ident is None else ("never" if t_first is None else f"step {t_first:,}"),
            ])
        doc.table(["quantity", "untrained: identical at every step", "untrained: first differs",
                   "trained (contrast): identical", "trained: first differs"], rows)
        if d.never_drawn is not None:
            nd = d.never_drawn
            doc.table(
                ["never-drawn bytes, same as the hole's first token", "at every step", "first differs"],
                [[q, "yes" if nd["identical_all_steps"][q] else "no",
                  "never" if nd["first_divergence"][q] is None else f"step {nd['first_divergence'][q]:,}"]
                 for q in ("logits", "grads", "positions")],
            )
        doc.para(d.verdict)
        if d.sampled:
            srows = []
            for e in d.sampled:
                lg, gr, po = e.get("logits", {}), e.get("grads"), e.get("positions", {})
                srows.append([
                    f"{e['step']:,}",
                    f"{lg.get('mean', float('nan')):+.6f}",
                    lg.get("verdict", "–"),
                    "–" if gr is None else f"{gr['norm_mean']:.4e}",
                    "–" if gr is None else f"{gr['pairwise_max']:.1e} ({gr['verdict']})",
                    f"{po.get('pairwise_max', 0):.1e} ({po.get('verdict', '–')})",
                ])
            doc.table(["step", "untrained logit", "logits", "shared gradient norm", "gradient distance max",
                       "position distance max"], srows)
        frz = d.freeze
        doc.table(
            ["freezing", "value"],
            [
                ["frozen from step (never moves again)", "–" if r.frozen_from is None else f"{r.frozen_from:,}"],
                ["steps with exactly zero update", f"{frz.get('frozen_count', 0):,} of {len(d.recorded_steps) - 1:,}"],
                ["of those, with a non-zero gradient (update below one ulp)",
                 f"{frz.get('frozen_with_gradient_count', 0):,}"],
                ["first frozen step", "–" if frz.get("first_frozen") is None else f"{frz['first_frozen']:,}"],
            ],
        )
        if d.notes:
            doc.bullets([f"note: {n}" for n in d.notes])

    doc.heading("Plots", 3)
    captions = {
        "dynamics_spread": "Spread inside the hole (max deviation from its first row) of positions, gradients "
                           "and logits at every step; exact zeros sit on the band marked 0.",
        "dynamics_speed": "How far the hole moves each step, and the norm of the gradient it shares.",
        "dynamics_logits": "The hole's shared logit against the trained tokens' logits.",
        "map": "Final embedding matrix on its two leading principal directions: token density without the "
               "black-hole mask (the hole is one dense bin) and with it; right: row norms, black-hole tokens in red.",
    }
    if r.density.masked is None:
        captions["map"] = ("Final embedding matrix on its two leading principal directions (no black holes, so "
                           "nothing to mask; the densest bin is circled); right: row norms.")
    for key, path in plots.items():
        doc.image(path, captions.get(key, key))

    doc.heading("Files", 3)
    doc.table(["file", "what"], [[f"`{p.relative_to(r.out_dir).as_posix()}`", _FILE_WHAT.get(k, k)]
                                 for k, p in r.files.items() if k not in plots and k != "report_html"])

    doc.heading("How this was made")
    doc.code(r.command)
    doc.table(["setting", "value"], [[k, _short(v)] for k, v in r.config.items()])
    doc.table(["software", "version"], [[k, v] for k, v in r.versions.items()])
    doc.table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in r.seconds.items()])
    return doc


_FILE_WHAT = {
    "recording": "every step's embeddings, gradients, logits, losses, optimizer state (safetensors)",
    "scan_initial": "black holes of the step-0 matrix (JSON)",
    "mask_initial": "step-0 mask, `black_hole_id`, group vectors (safetensors)",
    "scan_final": "black holes of the final matrix (JSON)",
    "mask_final": "final mask, `black_hole_id`, group vectors (safetensors)",
    "dynamics": "per-step rigid-body analysis (JSON)",
    "summary": "this report's numbers (JSON)",
    "report_md": "this report in Markdown",
}


def _config_json(config, corpus_path: Path) -> dict:
    from dataclasses import asdict, is_dataclass

    raw = asdict(config) if is_dataclass(config) else dict(vars(config))
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in raw.items()}
    out["corpus_path"] = str(corpus_path)
    return json.loads(json.dumps(out, default=str))


def _code_tokens(ids: list[int], limit: int = 12) -> str:
    """A few byte ids as code spans: `(` `)`."""
    shown = " ".join(f"`{t}`" for t in format_bytes(ids[:limit]).split(" "))
    return shown + (f" … (+{len(ids) - limit})" if len(ids) > limit else "")


def _short(value, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _scan_brief(s) -> dict:
    return {
        "unique_vectors": int(s.unique_vectors),
        "black_hole_tokens": int(s.black_hole_tokens),
        "group_sizes": [int(g.size) for g in s.groups],
    }


def _write_json(path: Path, obj) -> None:
    from blackholes.io.atomic import write_json

    write_json(path, obj)
