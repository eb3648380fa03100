"""A report page per model: ``blackholes scan SOURCE --report DIR``.

Writes ``DIR/report.md`` and ``DIR/report.html`` (one self-contained page: the plots are
embedded) with the plots in ``DIR/plots/``. The page opens with the answer in plain
words — how many tokens are dead, in how many holes, how big the halo is, how many
further candidates there are, who the dead tokens are — then the tables (the holes and
their decoded members; the near-duplicate clusters and halos; which coordinates separate
the holes; the candidates), then the plots:

- ``norms.png``: the row-norm histogram with holes, halo and candidates marked;
- ``indicator.png``: the under-trained indicator against token id (``--indicators``);
- ``holes.png``: the holes' pairwise ULP distances and their per-coordinate offsets (``--near``);
- ``map.png``: the density map without and with the black-hole mask.

Every part of a :class:`~blackholes.analysis.groups.ScanResult` may be missing (no
``--near``, no ``--indicators``, no tokenizer, no hole at all): the page says what was
not computed and how to get it. A :class:`~blackholes.analysis.groups.ModelScan`
(``--matrix both``) gets one section per matrix, its plots named ``input_*`` and ``output_*``.

>>> from blackholes import scan
>>> report = write_report(scan("model_dir", near=8, indicators=True), "report")
>>> report.html, [p.name for p in report.plots]
(PosixPath('report/report.html'), ['norms.png', 'indicator.png', 'holes.png', 'map.png'])
>>> report.answer[0]
'**12 of 64 tokens are dead** (18.75%): they sit in **2 black holes** — sets of tokens whose rows are bit-for-bit identical. The largest holds 8 tokens, the smallest 4.'
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.render.page import Document
from blackholes.render.report_answer import MATRIX_WORDS, Facts, as_code, facts, matrix_name, page_title
from blackholes.render.report_page import answer_section, intro, made_with, scan_tables
from blackholes.render.report_plots import draw_plots

REPORT_FILES = ("report.md", "report.html")
PLOT_NAMES = ("norms.png", "indicator.png", "holes.png", "map.png")  # every scan's report
OWNED_PLOTS = PLOT_NAMES + ("verification.png",)  # and the one a scan --verify adds: all this report may write
PREFIXES = ("", "input_", "output_")  # one matrix; --matrix both: one set of plots per matrix


# ---------------------------------------------------------------------------- files


def report_paths(folder: str | os.PathLike) -> list[Path]:
    """Every file :func:`write_report` may write into ``folder``, to check before any work.

    Plots are listed only when ``folder/plots`` exists (a file in a folder yet to be made
    cannot be an input); a ``folder`` that is a file is refused.

    >>> [p.name for p in report_paths("no-such-folder")]
    ['report.md', 'report.html']
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BlackholesError(f"--report takes a folder, but {folder} is a file")
    out = [folder / name for name in REPORT_FILES]
    if (folder / "plots").is_dir():
        out += [folder / "plots" / (prefix + name) for prefix in PREFIXES for name in OWNED_PLOTS]
    return out


@dataclass
class ModelReport:
    """What :func:`write_report` wrote: the two pages, the plots, the answer, and notes on what is missing."""

    folder: Path
    markdown: Path
    html: Path
    plots: list[Path]
    answer: list[str]
    facts: list["Facts"]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"folder": str(self.folder), "markdown": str(self.markdown), "html": str(self.html),
                "plots": [str(p) for p in self.plots], "answer": self.answer,
                "facts": [f.to_json() for f in self.facts], "notes": self.notes,
                "seconds": round(self.seconds, 3)}


def write_report(result, folder: str | os.PathLike, *, matrix=None, title: str | None = None) -> ModelReport:
    """Draw the plots into ``folder/plots`` and write ``report.md`` and ``report.html`` (atomically).

    ``result``: a ``ScanResult`` or a ``ModelScan``. ``matrix``: the scanned
    :class:`~blackholes.sources.matrix.Matrix` or 2-D array (for a ``ModelScan`` a list, one
    per matrix); without it the matrix is read again from ``result.source`` for the density
    map and the norms. ``folder`` is created when missing.

    >>> from blackholes import scan
    >>> write_report(scan(np.zeros((5, 3), np.float32)), "zeros-report").answer[0][:27]
    '**5 of 5 tokens are dead** '
    """
    t0 = time.perf_counter()
    folder = _make_folder(folder)
    parts = _parts(result, matrix)
    doc = Document(title or page_title(parts), folder)
    notes: list[str] = []
    written: list[Path] = []
    intro(doc, result, parts)
    answers = answer_section(doc, result, parts)
    verification = getattr(result, "verification", None)  # scan --verify: the model's own verdicts
    if verification is not None:
        from blackholes.render import verification as verified

        lines = verified.answer_lines(result, verification)
        doc.bullets(lines)
        answers = answers + lines  # a new list: the page keeps answer_section's own
    for label, r, m, prefix in parts:
        level = 2 if label is None else 3
        if label is not None:
            doc.heading(f"{label}: {as_code(r.key)}", 2)
        scan_tables(doc, r, level)
        drawn, missing = draw_plots(r, m, folder / "plots", prefix, matrix_name(r))
        written += [p for p, _ in drawn]
        notes += missing
        doc.heading("Plots", level)
        for path, caption in drawn:
            doc.image(path, caption)
        if missing:
            doc.bullets([f"not drawn: {n}" for n in missing])
    if verification is not None:
        written += [p for p, _ in verified.section(doc, result, verification, folder / "plots")]
    made_with(doc, parts, folder)
    _remove_stale(folder / "plots", written)
    from blackholes.io.atomic import write_text

    md, page = folder / REPORT_FILES[0], folder / REPORT_FILES[1]
    write_text(md, doc.markdown())
    write_text(page, doc.html())
    return ModelReport(folder=folder, markdown=md, html=page, plots=written, answer=answers,
                       facts=[facts(r) for _, r, _, _ in parts], notes=notes, seconds=time.perf_counter() - t0)


def _make_folder(folder) -> Path:
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BlackholesError(f"--report takes a folder, but {folder} is a file")
    try:
        (folder / "plots").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BlackholesError(f"cannot create the report folder {folder}: {e.strerror or e}") from None
    return folder


def _parts(result, matrix) -> list[tuple]:
    """(section label or None, ScanResult, matrix given or None, plot prefix) per matrix."""
    results = getattr(result, "results", None)
    if results is None:
        return [(None, result, matrix, "")]
    given = list(matrix) if matrix is not None else [None] * len(results)
    if len(given) != len(results):
        raise BlackholesError(f"write_report: {len(results)} matrices scanned but {len(given)} given")
    out = []
    for which, r, m in zip(("input", "output"), results, given):
        which = r.matrix or which
        out.append((MATRIX_WORDS.get(which, which).capitalize(), r, m, f"{which}_"))
    return out


def _remove_stale(plots: Path, written: list[Path]) -> None:
    """Remove this report's plot names that this run did not draw: the folder matches the page."""
    keep = {p.name for p in written}
    for prefix in PREFIXES:
        for name in OWNED_PLOTS:
            stale = plots / (prefix + name)
            if stale.name not in keep and stale.is_file():
                stale.unlink()
