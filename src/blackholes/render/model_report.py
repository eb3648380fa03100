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
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.render.page import Document

REPORT_FILES = ("report.md", "report.html")
PLOT_NAMES = ("norms.png", "indicator.png", "holes.png", "map.png")
PREFIXES = ("", "input_", "output_")  # one matrix; --matrix both: one set of plots per matrix

# How many rows each table shows (the JSON of `scan --json` has them all).
HOLES_SHOWN = 60
MEMBERS_SHOWN = 40  # decoded members per hole
MEMBER_HOLES = 30  # holes whose members are listed
CLUSTERS_SHOWN = 30
HALO_SHOWN = 60
CANDIDATES_SHOWN = 60
MIN_APART = 10  # candidates needed before a gap among them means anything
HEAT_HOLES = 40  # holes in the heat maps
HEAT_COORDINATES = 60  # coordinates in the offset map (the widest spread first)

CATEGORY_WORDS = {
    "padding": "padding rows (beyond the tokenizer's vocabulary)",
    "unused": "unused / reserved slots",
    "special": "special or control tokens",
    "byte_ascii": "single ASCII bytes",
    "byte_utf8_lead": "lone UTF-8 lead bytes",
    "byte_utf8_continuation": "lone UTF-8 continuation bytes",
    "byte_invalid_utf8": "bytes never valid in UTF-8",
    "undecodable": "fragments of UTF-8 characters",
    "unreachable_single_token": "tokens the tokenizer never produces (their text encodes as another token)",
    "unreachable_multi_token": "tokens the tokenizer never produces (their text encodes as several tokens)",
    "ok": "ordinary tokens",
    "normal": "ordinary tokens",
}
INDICATOR_WORDS = {
    "cosine_to_reference": "cosine distance to the dead tokens' mean, first principal component removed "
                           "(Magikarp's indicator; low = dead)",
    "norm": "row norm (low = dead)",
}
_REFERENCE_WORDS = {"holes": "hole members", "padding": "padding rows", "unused": "unused tokens"}
MATRIX_WORDS = {"input": "input embedding", "output": "output (unembedding) matrix"}


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
        out += [folder / "plots" / (prefix + name) for prefix in PREFIXES for name in PLOT_NAMES]
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
    doc = Document(title or _title(parts), folder)
    notes: list[str] = []
    written: list[Path] = []
    _intro(doc, result, parts)
    answers = _answer_section(doc, result, parts)
    for label, r, m, prefix in parts:
        level = 2 if label is None else 3
        if label is not None:
            doc.heading(f"{label}: {_code(r.key)}", 2)
        _tables(doc, r, level)
        drawn, missing = _plots(r, m, folder / "plots", prefix, _name(r))
        written += [p for p, _ in drawn]
        notes += missing
        doc.heading("Plots", level)
        for path, caption in drawn:
            doc.image(path, caption)
        if missing:
            doc.bullets([f"not drawn: {n}" for n in missing])
    _made(doc, parts, folder)
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
        for name in PLOT_NAMES:
            stale = plots / (prefix + name)
            if stale.name not in keep and stale.is_file():
                stale.unlink()


# ---------------------------------------------------------------------------- the numbers


@dataclass
class Facts:
    """The numbers the answer states, for one matrix (None: not computed)."""

    rows: int
    dim: int
    dead: int  # tokens in a hole
    holes: int
    largest: int | None
    smallest: int | None
    halo: int | None  # rows near a hole, in no hole (needs near=K)
    halo_rows: list[int]
    lone_clusters: int | None  # near clusters holding no hole
    lone_rows: int | None
    candidates: int | None  # under-trained candidates (needs indicators)
    further: int | None  # candidates outside the halo
    categories: dict | None  # dead tokens by category (needs a tokenizer)
    scripts: dict | None
    coordinates: int | None  # coordinates in which the hole vectors differ (needs near and two holes)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def facts(r) -> Facts:
    """The answer's numbers, straight from a ``ScanResult``.

    >>> from blackholes import scan
    >>> f = facts(scan("model.safetensors"))
    >>> f.dead, f.holes, f.largest, f.halo
    (12, 2, 8, None)
    """
    sizes = [g.size for g in r.groups]
    halo_rows, lone, lone_rows = [], None, None
    if r.clusters is not None:
        halo_rows = sorted({s for c in r.clusters.clusters if c.holes for s in c.singletons})
        alone = [c for c in r.clusters.clusters if not c.holes]
        lone, lone_rows = len(alone), sum(c.size for c in alone)
    cands = further = None
    if r.indicators is not None:
        cands = len(r.candidates)
        further = len(set(r.candidates) - set(halo_rows))
    cats = scripts = None
    dead_ids = np.flatnonzero(r.mask).tolist()
    if r.categories is not None and dead_ids:
        cats = r.categories.count_by(dead_ids, "category")
        scripts = r.categories.count_by(dead_ids, "script")
    return Facts(rows=r.shape[0], dim=r.shape[1], dead=int(r.black_hole_tokens), holes=len(r.groups),
                 largest=max(sizes) if sizes else None, smallest=min(sizes) if sizes else None,
                 halo=len(halo_rows) if r.clusters is not None else None, halo_rows=halo_rows,
                 lone_clusters=lone, lone_rows=lone_rows, candidates=cands, further=further,
                 categories=cats, scripts=scripts,
                 coordinates=len(r.anatomy.coordinates) if r.anatomy is not None else None)


# ---------------------------------------------------------------------------- the answer


def answer(r) -> list[str]:
    """The plain-language opening for one matrix: dead tokens, who they are, halo, holes' anatomy, candidates.

    >>> from blackholes import scan
    >>> answer(scan(np.eye(4, dtype=np.float32)))[0]
    '**No black holes**: all 4 rows of the matrix are distinct (no two are bit-for-bit identical).'
    """
    f = facts(r)
    lines = [_dead_line(f)]
    lines += _who_lines(r, f)
    if r.clusters is not None:
        lines += _halo_lines(r, f)
    if r.anatomy is not None:
        lines.append(_anatomy_line(r))
    if r.indicators is not None:
        lines.append(_candidates_line(r, f))
    return lines


def _dead_line(f: Facts) -> str:
    if not f.holes:
        return (f"**No black holes**: all {f.rows:,} rows of the matrix are distinct (no two are bit-for-bit "
                "identical).")
    holes = f"**{f.holes:,} black hole{'s' if f.holes != 1 else ''}**"
    size = (f"The largest holds {f.largest:,} tokens, the smallest {f.smallest:,}." if f.holes > 1
            else f"It holds all {f.largest:,} of them.")
    return (f"**{f.dead:,} of {f.rows:,} tokens are dead** ({_pct(f.dead, f.rows)}): they sit in {holes} — "
            f"sets of tokens whose rows are bit-for-bit identical. {size}")


def _who_lines(r, f: Facts) -> list[str]:
    if not f.holes and not f.halo and not f.candidates:
        return []
    if r.categories is None:
        return ["Who they are is not known: no tokenizer was found beside the model, so tokens are shown by id "
                "(give `--tokenizer PATH` for their text, categories and scripts)."]
    if not f.holes:
        return []
    return [f"**Who they are**: {_counted(f.categories, CATEGORY_WORDS)}; "
            f"scripts: {_counted(_real_scripts(f.scripts))}."]


def _halo_lines(r, f: Facts) -> list[str]:
    c = r.clusters
    grid = c.grid_note
    if not f.holes:
        line = f"No hole, so no halo (`--near {c.k}`)."
    elif f.halo:
        far = max(m.ulps for x in c.clusters if x.holes for m in x.members if m.hole is None)
        line = (f"**The halo: {f.halo:,} more token{'s' if f.halo != 1 else ''}** "
                f"{'are near-duplicates' if f.halo != 1 else 'is a near-duplicate'} of the "
                f"holes — not bit-identical, but within {c.k} ULPs in every coordinate of a hole or of each other, "
                f"at most {_ulps(far)} from their cluster's largest hole. {grid}.")
        if r.categories is not None:
            counts = r.categories.count_by(f.halo_rows, "category")
            line += (f" They are {_counted(counts, CATEGORY_WORDS)}." if f.halo != 1
                     else f" Its category: `{next(iter(counts))}`.")
    else:
        line = f"**No halo**: no other row lies within {c.k} ULPs of a hole in every coordinate. {grid}."
    lines = [line]
    if f.lone_clusters:
        lines.append(f"Elsewhere, {f.lone_clusters:,} cluster{'s' if f.lone_clusters != 1 else ''} of "
                     f"near-duplicate rows hold{'s' if f.lone_clusters == 1 else ''} no hole "
                     f"({f.lone_rows:,} rows in all; see the clusters table).")
    return lines


def _anatomy_line(r) -> str:
    a = r.anatomy
    H, D, C = len(a.rows), r.shape[1], len(a.coordinates)
    spread = max(a.spread_ulps) if a.spread_ulps else 0
    shown = ", ".join(str(c) for c in a.coordinates[:8]) + (", …" if C > 8 else "")
    chains = [c for c in a.one_ulp_components if len(c) > 1]
    clusters = len({r.clusters.hole_cluster[h] for h in range(H)}) if r.clusters is not None else None
    where = (f"all {H} lie in one near cluster; " if clusters == 1 else
             f"they lie in {clusters} separate near clusters; " if clusters else "")
    chain = (f"; {sum(map(len, chains))} of them form {len(chains)} chain{'s' if len(chains) != 1 else ''} of "
             "single 1-ULP steps" if chains else "")
    if C == D:
        return (f"**How the holes differ**: {where}the {H} hole vectors differ in every coordinate, by up to "
                f"{_ulps(spread)}: unrelated points{chain}.")
    return (f"**How the holes differ**: {where}the {H} hole vectors agree in {D - C:,} of {D:,} coordinates and "
            f"differ only in {C:,} ({shown}), by at most {_ulps(spread)}{chain}.")


def _candidates_line(r, f: Facts) -> str:
    ind = r.indicators
    halo = set(f.halo_rows)
    further = [i for i in r.candidates if i not in halo]
    beyond = ("outside the holes and the halo " if f.halo else "outside the holes " if f.holes else "")
    line = (f"**{f.further:,} {'further ' if f.holes else ''}candidate{'s' if f.further != 1 else ''}**: the "
            f"tokens {beyond}in the lowest {ind.percentile:g}% of the indicator"
            + (f" (at most {ind.threshold:.4g})" if ind.threshold is not None else "")
            + f" — {INDICATOR_WORDS[ind.main]}.")
    apart = standing_apart(ind.values(), further)
    named = r.categories is not None
    if apart is not None:
        n, last, following = apart
        who = ": " + ", ".join(_token(r, i) for i in further[:min(n, 8)]) + (", …" if n > 8 else "") if named else ""
        line += (f" **{n:,} of them stand{'s' if n == 1 else ''} apart** (at most {last:.3g}; the next at "
                 f"{following:.3g}){who} — "
                 "likely under-trained; the rest fill the percentile.")
    else:
        line += " No group stands apart from the rest: the percentile alone sets how many there are."
    if named and further:
        line += f" All {len(further):,} by category: {_counted(r.categories.count_by(further, 'category'))}."
    if f.candidates != f.further:
        line += f" {f.candidates - f.further:,} halo tokens fall below the threshold too."
    if ind.note:
        line += f" Note: {ind.note}."
    return line


def standing_apart(values: np.ndarray, ids: list[int]) -> tuple[int, float, float] | None:
    """Whether the lowest of ``values[ids]`` form a group set off by a gap wider than half their range:
    (rows in that group, its largest value, the next value), else None. Undefined (NaN) values are left
    out; fewer than ``MIN_APART`` values: None.

    >>> values = np.array([0.01, 0.02] + [0.80 + 0.01 * k for k in range(10)])
    >>> standing_apart(values, range(12))
    (2, 0.02, 0.8)
    >>> standing_apart(values[2:], range(10)) is None
    True
    """
    v = np.sort(np.asarray(values, dtype=np.float64)[np.asarray(ids, dtype=np.int64)])
    v = v[np.isfinite(v)]
    if len(v) < MIN_APART or v[-1] <= v[0]:  # with a handful of values every gap looks wide
        return None
    gaps = np.diff(v)
    k = int(np.argmax(gaps))
    if gaps[k] < 0.5 * (v[-1] - v[0]):
        return None
    return k + 1, float(v[k]), float(v[k + 1])


def _counted(counts: dict, names: dict | None = None, limit: int = 5) -> str:
    """Counts in words, most common first: "200 unused / reserved slots, 67 padding rows, …" with
    ``names``, else "Thai 40, Han 12".

    >>> _counted({"Thai": 40, "Han": 12})
    'Thai 40, Han 12'
    """
    items = list(counts.items())
    if not items:
        return "none"
    parts = [f"{n:,} {names.get(k, k)}" if names is not None else f"{k} {n:,}" for k, n in items[:limit]]
    if len(items) > limit:
        parts.append(f"{sum(n for _, n in items[limit:]):,} others")
    return ", ".join(parts)


def _real_scripts(scripts: dict) -> dict:
    """Scripts without "none" (no text: padding, special), unless that is all there is."""
    real = {k: n for k, n in scripts.items() if k != "none"}
    return real or scripts


def _pct(part: int, whole: int) -> str:
    share = 100 * part / whole if whole else 0.0
    return "<0.01%" if part and share < 0.01 else f"{share:.2f}%"


def _ulps(u) -> str:
    from blackholes.io.dtypes import ULP_NAN

    u = int(u)
    return "NaN (a NaN coordinate)" if u >= ULP_NAN else f"{u:,} ULP{'s' if u != 1 else ''}"


def _ulp_cell(u) -> str:
    from blackholes.io.dtypes import ULP_NAN

    return "NaN" if int(u) >= ULP_NAN else f"{int(u):+,}"


def id_ranges(ids, limit: int = 12) -> str:
    """Sorted ids as runs: "1–4, 9, 11, 12"; cut after ``limit`` items with the number left.

    >>> id_ranges([12, 1, 2, 3, 4, 9, 11])
    '1–4, 9, 11, 12'
    >>> id_ranges(range(0, 40, 2), limit=3)
    '0, 2, 4, … (+17 more)'
    """
    ids = sorted(int(i) for i in ids)
    if not ids:
        return "–"
    runs, start = [], 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or ids[k] != ids[k - 1] + 1:
            runs.append((ids[start], ids[k - 1]))
            start = k
    items = []  # (text, ids it stands for)
    for a, b in runs:
        items += [(f"{a}–{b}", b - a + 1)] if b - a >= 2 else [(str(i), 1) for i in range(a, b + 1)]
    shown = items[:limit]
    left = len(ids) - sum(n for _, n in shown)
    return ", ".join(t for t, _ in shown) + (f", … (+{left:,} more)" if left else "")


def _literal(text: str) -> str:
    """A token's text as a code span holding its Python literal: control characters, quotes and
    spaces visible; ``*`` and backticks written as escapes so no Markdown mark can form.

    >>> _literal(" the"), _literal("**")
    ("`' the'`", "`'\\\\x2a\\\\x2a'`")
    """
    return "`" + repr(text).replace("`", "\\x60").replace("*", "\\x2a") + "`"


def _code(text: str) -> str:
    """User text (a path, a tensor name) as a code span."""
    return "`" + str(text).replace("`", "\\x60").replace("*", "\\x2a") + "`"


def _token(r, i: int) -> str:
    """Token ``i`` as the page shows it: its text, "padding row", or just its id without a tokenizer."""
    i = int(i)
    if r.categories is not None and i in r.categories:
        text = r.categories[i].text
        return "padding row" if text is None else _literal(text)
    return f"`{i}`"


def _category(r, i: int) -> tuple[str, str]:
    if r.categories is not None and int(i) in r.categories:
        info = r.categories[int(i)]
        return info.category, info.script
    return "–", "–"


def _cell_counts(counts: dict, limit: int = 3) -> str:
    items = list(counts.items())
    return ", ".join(f"{k} {n:,}" for k, n in items[:limit]) + (", …" if len(items) > limit else "")


def _name(r) -> str:
    """A short name for titles: a model id as given, a folder or file by its name (a generic file name such
    as ``model.safetensors`` with its folder's); the tensor after it."""
    source = str(r.source)
    if "://" in source or os.sep in source or source.startswith((".", "~")):
        path = Path(source.rstrip("/"))
        generic = path.suffix and path.name.startswith(("model", "consolidated", "pytorch_model"))
        source = (f"{path.parent.name}/{path.name}" if generic and path.parent.name else path.name) or source
    return source if r.key in (None, "", "<array>") else f"{source} [{r.key}]"


def _title(parts) -> str:
    r = parts[0][1]
    name = _name(r) if len(parts) == 1 else _name(r).split(" [")[0]
    return "Black-hole tokens in " + re.sub(r"[`*]", "", name)


# ---------------------------------------------------------------------------- the page


def _intro(doc: Document, result, parts) -> None:
    r = parts[0][1]
    matrices = "; ".join(
        f"{_code(x.key)} ("
        + ", ".join(w for w in (MATRIX_WORDS.get(x.matrix), _own_note(x)) if w) + "): "
        + f"{x.shape[0]:,} × {x.shape[1]:,} {x.dtype}"
        + (f", identity of its stored {x.quantization} blocks" if x.quantization else "")
        for _, x, _, _ in parts).replace(" (): ", ": ")
    tok = (f"tokens decoded with {_code(r.tokenizer)} ({r.vocab_size:,} tokens"
           + (f"; rows from {r.vocab_size:,} on are padding)" if r.vocab_size and r.shape[0] > r.vocab_size else ")")
           if r.tokenizer else "no tokenizer, so tokens are shown by id")
    text = (f"Scanned {_code(r.source)}: {matrices}; {tok}. A **black hole** is a set of two or more tokens "
            "whose rows are bit-for-bit identical: dead vocabulary that training never pulled apart. Identity is "
            "of raw bits; nearness is counted in ULPs on the values' own grid, never decided from a float "
            "distance.")
    if getattr(result, "tied", False) and len(parts) == 1 and hasattr(result, "results"):
        text += " The model ties its output matrix to its input embedding: one matrix, scanned once."
    doc.para(text)


def _own_note(x) -> str:
    """Why this tensor was chosen, unless it only repeats which matrix it is."""
    note = x.note or ""
    return "" if x.matrix and note.startswith(x.matrix) else note


def _answer_section(doc: Document, result, parts) -> list[str]:
    doc.heading("Answer")
    if len(parts) == 1:
        lines = answer(parts[0][1])
        doc.bullets(lines)
        return lines
    out = []
    for label, r, _, _ in parts:
        lines = answer(r)
        doc.heading(f"{label} ({_code(r.key)})", 3)
        doc.bullets(lines)
        out += [f"{label}: {line}" for line in lines]
    a, b = parts[0][1], parts[1][1]
    if a.shape[0] == b.shape[0] and a.black_hole_tokens and b.black_hole_tokens:
        both = int((np.asarray(a.mask) & np.asarray(b.mask)).sum())
        line = f"**{both:,} tokens are dead in both matrices** (a hole in each)."
        doc.para(line)
        out.append(line)
    return out


def _tables(doc: Document, r, level: int) -> None:
    _holes_table(doc, r, level)
    if r.groups:
        _members(doc, r, level)
    if r.clusters is not None:
        _clusters_table(doc, r, level)
        _halo_table(doc, r, level)
    if r.anatomy is not None:
        _anatomy_table(doc, r, level)
    if r.indicators is not None:
        _candidates_table(doc, r, level)


def _holes_table(doc: Document, r, level: int) -> None:
    doc.heading("The black holes", level)
    if not r.groups:
        doc.para(f"None: all {r.shape[0]:,} rows are distinct.")
        return
    cats = r.categories is not None
    header = ["hole", "tokens", "token ids"] + (["examples", "categories", "scripts"] if cats else [])
    header += ["near cluster"] if r.clusters is not None else []
    rows = []
    for g in r.groups[:HOLES_SHOWN]:
        row = [f"#{g.id}", f"{g.size:,}", id_ranges(g.token_ids, 8)]
        if cats:
            shown = _examples(r, g.token_ids, 5)
            more = f" … (+{g.size - len(shown):,})" if g.size > len(shown) else ""
            row += [", ".join(_token(r, i) for i in shown) + more,
                    _cell_counts(r.categories.count_by(g.token_ids, "category")),
                    _cell_counts(_real_scripts(r.categories.count_by(g.token_ids, "script")))]
        if r.clusters is not None:
            row.append(f"#{r.clusters.cluster_of(g.id - 1).id}")
        rows.append(row)
    doc.table(header, rows)
    if len(r.groups) > HOLES_SHOWN:
        doc.para(f"… and {len(r.groups) - HOLES_SHOWN:,} more holes (all of them in `--json`).")


def _members(doc: Document, r, level: int) -> None:
    doc.heading("Who is in each hole", level)
    items = []
    for g in r.groups[:MEMBER_HOLES]:
        if r.categories is None:
            items.append(f"**#{g.id}** ({g.size:,} tokens): ids {id_ranges(g.token_ids, 200)}")
            continue
        kinds = _by_category(r, g.token_ids)
        each = max(3, MEMBERS_SHOWN // len(kinds))
        parts = []
        for cat, ids in kinds:
            if cat == "padding":  # no text to show: the rows are the story
                parts.append(f"{len(ids):,} padding: rows {id_ranges(ids, 8)}")
                continue
            more = f", … (+{len(ids) - each:,} more)" if len(ids) > each else ""
            parts.append(f"{len(ids):,} {cat}: " + ", ".join(f"{i} {_token(r, i)}" for i in ids[:each]) + more)
        items.append(f"**#{g.id}** ({g.size:,} tokens) — " + "; ".join(parts))
    doc.bullets(items)
    if len(r.groups) > MEMBER_HOLES:
        doc.para(f"… {len(r.groups) - MEMBER_HOLES:,} more holes; every member of every hole is in `--json`.")


def _by_category(r, ids) -> list[tuple[str, list[int]]]:
    """``ids`` split by token category, the most common category first (ids ascending within each)."""
    split: dict[str, list[int]] = {}
    for i in ids:
        split.setdefault(_category(r, i)[0], []).append(int(i))
    return sorted(split.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def _examples(r, ids, limit: int) -> list[int]:
    """Up to ``limit`` of ``ids``, taken in turn from each category (a hole of reserved tokens and
    padding rows shows both)."""
    queues = [list(v) if cat != "padding" else list(v[:1]) for cat, v in _by_category(r, ids)]  # one padding row says it
    out: list[int] = []
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out


def _clusters_table(doc: Document, r, level: int) -> None:
    c = r.clusters
    doc.heading("Near-duplicates: clusters and halos", level)
    doc.para(f"Rows within {c.k} ULPs of each other in every coordinate are joined into clusters; a hole counts "
             f"as one vector. The **halo** of a hole: the rows of its cluster that are in no hole. {c.grid_note}.")
    if not c.clusters:
        doc.para("No cluster: no two distinct vectors are that near.")
        return
    rows = []
    for x in c.clusters[:CLUSTERS_SHOWN]:
        halo = ", ".join(_token(r, i) if r.categories is not None else str(i) for i in x.singletons[:4])
        halo += f" … (+{len(x.singletons) - 4:,})" if len(x.singletons) > 4 else ""
        rows.append([f"#{x.id}", f"{x.size:,}", ", ".join(f"#{h + 1}" for h in x.holes) or "none",
                     f"{len(x.singletons):,}", _ulps(x.diameter_ulps),
                     f"{x.max_l2:.3g}" + ("" if x.max_l2_exact else " (bound)"), halo or "–"])
    doc.table(["cluster", "rows", "holes", "rows in no hole", "diameter", "max L2 distance", "those rows"], rows)
    if len(c.clusters) > CLUSTERS_SHOWN:
        doc.para(f"… and {len(c.clusters) - CLUSTERS_SHOWN:,} more clusters (all of them in `--json`).")


def _halo_table(doc: Document, r, level: int) -> None:
    members = [(x, m) for x in r.clusters.clusters if x.holes for m in x.members if m.hole is None]
    if not members:
        return
    doc.heading("The halo, row by row", level + 1)
    rows = []
    for x, m in members[:HALO_SHOWN]:
        cat, script = _category(r, m.row)
        rows.append([str(m.row), _token(r, m.row) if r.categories is not None else "–", cat, script, f"#{x.id}",
                     f"#{x.holes[0] + 1}", _ulps(m.ulps), f"{m.differing:,}"])
    doc.table(["row", "token", "category", "script", "cluster", "cluster's largest hole",
               "distance to it", "coordinates that differ"], rows)
    if len(members) > HALO_SHOWN:
        doc.para(f"… and {len(members) - HALO_SHOWN:,} more halo rows (all of them in `--json`).")


def _anatomy_table(doc: Document, r, level: int) -> None:
    a = r.anatomy
    H = len(a.rows)
    shown = min(H, 16)
    doc.heading("Which coordinates separate the holes", level)
    doc.para(f"The {H} hole vectors have the same bits in every coordinate but these {len(a.coordinates):,}. Each "
             f"cell: the hole's value in ULPs from hole #1's ({a.grid} grid; 0 = the same bits)"
             + (f"; the first {shown} holes shown." if shown < H else "."))
    order = _widest(a, 40)
    rows = [[str(a.coordinates[j]), _ulps(a.spread_ulps[j])] + [_ulp_cell(a.offsets[h, j]) for h in range(shown)]
            for j in order]
    doc.table(["coordinate", "spread"] + [f"#{h + 1}" for h in range(shown)], rows)
    if len(order) < len(a.coordinates):
        doc.para(f"… {len(a.coordinates) - len(order):,} more coordinates with smaller spreads (all in `--json`).")
    chains = [c for c in a.one_ulp_components if len(c) > 1]
    if chains:
        doc.para("Holes one ULP apart in exactly one coordinate, chained: "
                 + "; ".join(" – ".join(f"#{h + 1}" for h in c) for c in chains) + ".")


def _widest(a, limit: int) -> list[int]:
    """Indices into ``a.coordinates`` of the ``limit`` widest spreads, in coordinate order."""
    spread = np.asarray(a.spread_ulps, dtype=np.float64)
    keep = np.argsort(-spread, kind="stable")[:limit]
    return sorted(int(j) for j in keep)


def _candidates_table(doc: Document, r, level: int) -> None:
    ind = r.indicators
    doc.heading("Under-trained candidates", level)
    ref = ("given with `--reference`" if "given" in ind.reference_from else "the union of "
           + ", ".join(f"{_REFERENCE_WORDS.get(k, k)} ({n:,})" for k, n in ind.reference_from.items()))
    thr = f"at or below {ind.threshold:.4g}, " if ind.threshold is not None else ""
    doc.para(f"Indicator: {INDICATOR_WORDS[ind.main]}. Reference set (the known-dead rows whose mean gives the "
             f"dead direction): {len(ind.reference):,} rows, {ref}. Candidates: the tokens outside the "
             f"holes and the padding rows {thr}the lowest {ind.percentile:g}%; most dead first "
             f"({len(ind.candidates):,} in all).")
    if not len(ind.candidates):
        return
    halo = set(facts(r).halo_rows)
    values = ind.values()
    rows = []
    for rank, i in enumerate(ind.candidates[:CANDIDATES_SHOWN], start=1):
        cat, script = _category(r, i)
        value = "undefined" if not np.isfinite(values[i]) else f"{values[i]:.4g}"
        rows.append([str(rank), str(int(i)), _token(r, i) if r.categories is not None else "–", cat, script,
                     value, f"{ind.norm[i]:.4g}", "yes" if int(i) in halo else ""])
    doc.table(["rank", "id", "token", "category", "script", ind.main, "norm", "in the halo"], rows)
    if len(ind.candidates) > CANDIDATES_SHOWN:
        doc.para(f"… and {len(ind.candidates) - CANDIDATES_SHOWN:,} more candidates (all of them in `--json`).")
    if r.categories is not None:
        doc.para("All candidates by category: "
                 + _counted(r.categories.count_by([int(i) for i in ind.candidates], "category"), limit=12) + ".")


def _made(doc: Document, parts, folder: Path) -> None:
    doc.heading("How this was made")
    cmd = command(parts, str(folder))
    if cmd:
        doc.para("To scan it again:")
        doc.code(cmd)
    rows = []
    for label, r, _, _ in parts:
        tag = f"{label}: " if label else ""
        rows += [[f"{tag}{k}", v] for k, v in _settings(r)]
    doc.table(["setting", "value"], rows)
    doc.table(["software", "version"], [[k, v] for k, v in versions().items()])


def _settings(r) -> list[tuple[str, str]]:
    out = [("source", _code(r.source)), ("tensor", _code(r.key)), ("why this tensor", r.note or "–"),
           ("shape", f"{r.shape[0]:,} × {r.shape[1]:,}"), ("dtype", r.dtype), ("format", r.format)]
    if r.quantization:
        out.append(("identity", f"of the stored {r.quantization} row bytes"))
    if r.revision:
        out.append(("revision", r.revision))
    out.append(("tokenizer", _code(r.tokenizer) if r.tokenizer else "none"))
    if r.clusters is not None:
        out += [("near (K)", f"{r.clusters.k} ULPs"), ("ULP grid", r.clusters.grid)]
    if r.indicators is not None:
        out += [("indicator", r.indicators.main), ("percentile", f"{r.indicators.percentile:g}")]
    out.append(("time to find the holes", f"{r.seconds:.2f} s"))
    return out


def command(parts, folder: str = "DIR") -> str | None:
    """The ``blackholes scan`` command line that repeats this scan (None for an in-memory array)."""
    import shlex

    r = parts[0][1]
    if r.format == "array" or r.source in (None, "<array>"):
        return None
    argv = ["blackholes", "scan", str(r.source)]
    step = re.search(r"at step (\d+)", r.note or "")
    if len(parts) > 1:
        argv += ["--matrix", "both"]
    elif r.key.startswith("embeddings[") and step:
        argv += ["--step", step[1]]
    elif r.key:
        argv += ["--key", r.key]
    if r.tokenizer and Path(r.tokenizer).is_file():
        argv += ["--tokenizer", r.tokenizer]
    if r.clusters is not None:
        argv += ["--near", str(r.clusters.k)]
    if r.indicators is not None:
        argv.append("--indicators")
        if "given" in r.indicators.reference_from:
            argv += ["--reference", id_ranges(r.indicators.reference, 10 ** 9).replace("–", "-").replace(" ", "")]
        if r.indicators.percentile != 2.0:
            argv += ["--percentile", f"{r.indicators.percentile:g}"]
    return shlex.join(argv + ["--report", folder])


def versions() -> dict[str, str]:
    """Versions of what shaped the page (read from the installed metadata: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("blackholes", "numpy", "tokenizers", "matplotlib"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


# ---------------------------------------------------------------------------- the matrix, again


class _ValueRows:
    """A quantised matrix's rows as float32 values, a chunk at a time (what the PCA reads)."""

    def __init__(self, m):
        self.m, self.shape, self.ndim, self.dtype = m, m.shape, 2, np.dtype(np.float32)

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("rows are read as contiguous slices")
        start, stop, _ = key.indices(self.shape[0])
        return self.m.float_rows(start, stop)


def _matrix_for(r, given):
    """(the scanned Matrix or None, why not): the one given, else read again from ``r.source``."""
    from blackholes.sources.load import as_matrix

    given = given if given is not None else getattr(r, "source_matrix", None)  # what scan() read
    if given is not None:
        m = as_matrix(given, dtype=r.dtype if isinstance(given, np.ndarray) else None)
    elif r.format == "array" or r.source in (None, "<array>"):
        return None, "the matrix was scanned from memory; pass it as write_report(..., matrix=...)"
    elif r.bytes_read is not None:
        return None, "the matrix was fetched over the network and is not fetched twice; pass matrix="
    else:
        try:
            m = _reload(r)
        except BlackholesError as e:
            return None, f"the matrix could not be read again: {e}"
    if tuple(m.shape) != tuple(r.shape) or m.dtype != r.dtype:
        return None, (f"the matrix at hand ({m.shape[0]:,} × {m.shape[1]:,} {m.dtype}) is not the one scanned "
                      f"({r.shape[0]:,} × {r.shape[1]:,} {r.dtype})")
    if m.dequantize is not None:  # the PCA reads float32 values: dequantise a chunk at a time
        from blackholes.sources.matrix import Matrix

        m = Matrix(array=_ValueRows(m), dtype="F32", source=m.source, path=m.path, key=m.key)
    return m, ""


def _reload(r):
    """The matrix ``r`` scanned, memory-mapped again (a training recording: the same step)."""
    from blackholes.sources import load_matrix

    found = re.fullmatch(r"embeddings\[(-?\d+)\]", r.key or "")
    if found and r.path:
        from blackholes.io.safetensors import open_tensor
        from blackholes.sources.load import as_matrix

        return as_matrix(open_tensor(r.path, "embeddings")[int(found[1])], dtype=r.dtype)
    return load_matrix(r.source, key=r.key)


# ---------------------------------------------------------------------------- plots


CAPTIONS = {
    "norms": "Row norms (L2; log count axis). Every member of a hole has the same norm, so each hole is one "
             "spike (red, labelled with its number); the halo (purple) sits at the holes' norms; candidates "
             "in orange.",
    "indicator": "The under-trained indicator of every token against its id. Candidates (orange) lie at or "
                 "below the dashed threshold; holes in red, halo in purple, padding rows on the grey band.",
    "holes": "Left: distance between every two hole vectors (the largest difference in any coordinate, in "
             "ULPs). Right: each hole's offset from hole #1 in the coordinates where they differ — the "
             "coordinates that separate the holes.",
    "map": "The matrix on its two leading principal directions: token density without the black-hole mask "
           "(each hole is one dense bin) and with it (the PCA refitted on the other rows); right: row norms, "
           "black-hole tokens in red.",
}


def _plots(r, given, plots: Path, prefix: str, name: str) -> tuple[list[tuple[Path, str]], list[str]]:
    """Draw what this result allows; ((path, caption) drawn, what was not drawn and why)."""
    drawn, missing = [], []
    m, why = _matrix_for(r, given)
    dmap = None
    if m is not None:
        try:
            dmap = _density(r, m)
        except BlackholesError as e:
            why = str(e)
    norms = r.indicators.norm if r.indicators is not None else (dmap.norms if dmap is not None else None)
    if norms is not None:
        drawn.append((plot_norms(r, norms, plots / f"{prefix}norms.png", name), CAPTIONS["norms"]))
    else:
        missing.append(f"the row-norm histogram ({why})")
    if r.indicators is not None:
        drawn.append((plot_indicator(r, plots / f"{prefix}indicator.png", name), CAPTIONS["indicator"]))
    else:
        missing.append("the indicator plot (scan with `--indicators`)")
    if r.anatomy is not None:
        drawn.append((plot_holes(r, plots / f"{prefix}holes.png", name), CAPTIONS["holes"]))
    elif len(r.groups) < 2:
        missing.append("the holes' ULP heat map (there are fewer than two holes to compare)")
    else:
        missing.append("the holes' ULP heat map (scan with `--near`)")
    if dmap is not None:
        from blackholes.render.plots import plot_density_map

        halo = len(facts(r).halo_rows)
        caption = CAPTIONS["map"] + (f" The {halo:,} halo rows are not masked: lying next to the holes, they can "
                                     "remain a dense spot." if halo else "") if dmap.masked is not None else (
            "The matrix on its two leading principal directions (no black holes, so nothing to mask; the "
            "densest bin is circled); right: row norms.")
        drawn.append((plot_density_map(dmap, plots / f"{prefix}map.png", title=name), caption))
    else:
        missing.append(f"the density map ({why})")
    return drawn, missing


def _density(r, m):
    from blackholes.analysis.density import density_map

    holes = r.black_hole_tokens > 0
    return density_map(m, mask=np.asarray(r.mask) if holes else None,
                       black_hole_id=np.asarray(r.black_hole_id) if holes else None)


_COLOURS = {"other": "#4c72b0", "candidates": "#f28e2b", "halo": "#9467bd", "holes": "#d62728"}


def _row_sets(r) -> list[tuple[str, np.ndarray]]:
    """(name, bool [V]) of the holes, the halo, the candidates outside both, and the other rows."""
    V = r.shape[0]
    hole = np.asarray(r.mask, bool)
    halo = np.zeros(V, bool)
    halo[facts(r).halo_rows] = True
    cand = np.zeros(V, bool)
    cand[r.candidates] = True
    cand &= ~halo & ~hole
    return [("other", ~(hole | halo | cand)), ("candidates", cand), ("halo", halo), ("holes", hole)]


_SET_WORDS = {"other": "other tokens", "candidates": "candidates", "halo": "halo (near a hole)",
              "holes": "black-hole tokens"}


def plot_norms(r, norms: np.ndarray, path: Path, name: str) -> Path:
    """The row-norm histogram, stacked: other tokens, candidates, halo, holes; the largest holes labelled."""
    from blackholes.render.plots import literal, save_figure
    import matplotlib.pyplot as plt

    norms = np.asarray(norms, dtype=np.float64)
    finite = np.isfinite(norms)  # a row holding NaN or inf has no norm to place
    sets = [(k, s & finite) for k, s in _row_sets(r) if (s & finite).any()]
    edges, log_x = _norm_edges(norms[finite] if finite.any() else np.zeros(1))
    fig, ax = plt.subplots(figsize=(10, 4.8), layout="constrained")
    counts, _, _ = ax.hist([norms[s] for _, s in sets], bins=edges, stacked=True,
                           color=[_COLOURS[k] for k, _ in sets],
                           label=[f"{_SET_WORDS[k]} ({int(s.sum()):,})" for k, s in sets])
    total = np.asarray(counts[-1] if len(sets) > 1 else counts, dtype=np.float64).ravel()
    total = total if total.size else np.zeros(len(edges) - 1)
    ax.set_yscale("log")
    ax.set_ylim(0.7, max(2.0, total.max()) * 12)  # headroom for the hole labels and the legend
    if log_x:
        ax.set_xscale("log")
    _label_holes(ax, r, norms, edges, total)
    zero, odd = int((norms == 0).sum()), int((~finite).sum())
    ax.set_xlabel("L2 norm of the row (embedding units)" + (", log scale" if log_x else "")
                  + (f"; {zero:,} rows have norm exactly 0" if zero else "")
                  + (f"; {odd:,} rows with a NaN or infinite norm not shown" if odd else ""))
    ax.set_ylabel("tokens per bin (log scale)")
    ax.legend(loc="upper right", fontsize=8.5, framealpha=0.9)
    ax.set_title(literal(f"{name}\nrow norms of {r.shape[0]:,} tokens"), fontsize=10.5)
    return save_figure(fig, path)


def _norm_edges(norms: np.ndarray) -> tuple[np.ndarray, bool]:
    """120 bins over the norms; logarithmic when the positive norms span more than 50x and none is 0."""
    lo, hi = float(norms.min()), float(norms.max())
    if lo > 0 and hi / lo > 50:
        return np.geomspace(lo, hi * 1.0001, 121), True
    if hi <= lo:
        lo, hi = lo - 0.5 * (abs(lo) or 1.0), hi + 0.5 * (abs(hi) or 1.0)
    return np.linspace(lo, hi, 121), False


def _label_holes(ax, r, norms, edges, total, top: int = 8) -> None:
    """One label per bin holding one of the ``top`` largest holes, naming every hole in that bin:
    "#1 (814)" or "holes #1–#13: 2,100 tokens"."""
    if not r.groups:
        return
    by_bin: dict[int, list] = {}
    for g in r.groups:
        b = int(np.clip(np.searchsorted(edges, norms[g.token_ids[0]], side="right") - 1, 0, len(edges) - 2))
        by_bin.setdefault(b, []).append(g)
    labelled = sorted(b for b, groups in by_bin.items() if any(g.id <= top for g in groups))
    for n, b in enumerate(labelled):
        groups = by_bin[b]
        x = 0.5 * (edges[b] + edges[b + 1])
        if len(groups) == 1:
            text = f"#{groups[0].id} ({groups[0].size:,})"
        else:
            text = f"holes {_hole_list([g.id for g in groups])}: {sum(g.size for g in groups):,} tokens"
        ax.annotate(text, (x, max(total[b], 1.0)), xytext=(0, 8 + 13 * (n % 3)), textcoords="offset points",
                    ha="center", fontsize=8, color="#8b0000", fontweight="bold",
                    arrowprops=dict(arrowstyle="-", color="#8b0000", lw=0.6),
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))


def _hole_list(ids: list[int]) -> str:
    """Hole numbers as "#1–#6" when consecutive, else "#1, #4, #5"."""
    ids = sorted(ids)
    if len(ids) > 2 and ids[-1] - ids[0] + 1 == len(ids):
        return f"#{ids[0]}–#{ids[-1]}"
    return ", ".join(f"#{i}" for i in ids[:6]) + (f", … ({len(ids)} holes)" if len(ids) > 6 else "")


def plot_indicator(r, path: Path, name: str) -> Path:
    """The main indicator against token id: every row, the sets in colour, the candidates' threshold."""
    from blackholes.render.plots import literal, save_figure
    import matplotlib.pyplot as plt

    ind = r.indicators
    values = np.asarray(ind.values(), dtype=np.float64)
    V = len(values)
    ids = np.arange(V)
    finite = np.isfinite(values)
    fig, ax = plt.subplots(figsize=(10, 4.8), layout="constrained")
    if r.vocab_size and V > r.vocab_size:
        ax.axvspan(r.vocab_size - 0.5, V - 0.5, color="0.9", lw=0, label=f"padding rows ({V - r.vocab_size:,})")
    sizes = {"other": 2, "candidates": 10, "halo": 12, "holes": 8}
    order = {"other": 0, "holes": 1, "halo": 2, "candidates": 3}  # the few drawn last: the holes' band hides nothing
    for k, s in sorted(_row_sets(r), key=lambda ks: order[ks[0]]):
        pick = s & finite
        if pick.any():
            ax.scatter(ids[pick], values[pick], s=sizes[k], c=_COLOURS[k], lw=0, rasterized=True,
                       label=f"{_SET_WORDS[k]} ({int(pick.sum()):,})")
    lo, hi = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 1.0)
    if (~finite).any():  # no direction off the first principal component: drawn below the rest, not at a fake value
        y = lo - 0.06 * ((hi - lo) or 1.0)
        ax.scatter(ids[~finite], np.full(int((~finite).sum()), y), s=14, marker="x", c="k", lw=0.8,
                   label=f"undefined: no direction off PC1 ({int((~finite).sum()):,}; counted as most dead)")
    if ind.threshold is not None:
        ax.axhline(ind.threshold, ls="--", c="k", lw=0.9,
                   label=f"threshold: the lowest {ind.percentile:g}% ({ind.threshold:.3g})")
    if ind.main == "norm" and lo > 0 and hi / lo > 50 and finite.all():
        ax.set_yscale("log")
    ax.set_xlim(-0.5, V - 0.5)
    ax.set_xlabel("token id")
    ax.set_ylabel("cosine distance to the dead mean\n(1st PC removed; low = dead)" if ind.main != "norm"
                  else "row L2 norm (low = dead)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, framealpha=0.9)
    ax.set_title(literal(f"{name}\nthe under-trained indicator ({ind.main}) of every token"), fontsize=10.5)
    return save_figure(fig, path)


def plot_holes(r, path: Path, name: str) -> Path:
    """Two heat maps: the holes' pairwise L-infinity ULP distances, and their offsets per separating coordinate."""
    from blackholes.render.plots import literal, save_figure
    import matplotlib.pyplot as plt

    a = r.anatomy
    H = min(len(a.rows), HEAT_HOLES)
    cols = _widest(a, HEAT_COORDINATES)
    C = len(cols)
    cell = min(0.42, 13.0 / (H + C))
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(max(8.0, cell * (H + C) + 4.5), max(4.2, cell * H + 2.4)), layout="constrained",
        gridspec_kw={"width_ratios": [max(H, 3), max(C, 3)]})
    labels = [f"#{h + 1} ({r.groups[h].size:,})" for h in range(H)]
    _heat(fig, left, a.ulps[:H, :H], labels, [f"#{h + 1}" for h in range(H)], signed=False,
          bar="ULPs", title="Distance between hole vectors\n(largest coordinate difference, ULPs)")
    _heat(fig, right, a.offsets[:H][:, cols], labels, [str(a.coordinates[j]) for j in cols], signed=True,
          bar="ULPs from hole #1", title="Offset from hole #1 in each separating coordinate\n(ULPs; blank = the same bits)")
    right.set_xlabel("coordinate" + (f" (the {C} widest spreads of {len(a.coordinates):,})"
                                     if C < len(a.coordinates) else ""))
    fig.suptitle(literal(f"{name}\nhow the {len(a.rows)} hole vectors differ — in {len(a.coordinates):,} of "
                         f"{r.shape[1]:,} coordinates ({a.grid} grid)"
                         + (f"; the {H} largest holes shown" if H < len(a.rows) else "")), fontsize=11)
    return save_figure(fig, path)


def _heat(fig, ax, values, ylabels, xlabels, *, signed: bool, bar: str, title: str) -> None:
    """One integer heat map: one colour per ULP count when they are few, else a symmetric-log scale
    (0 stays visible); NaN cells grey; the numbers written in the cells when there are few."""
    from blackholes.io.dtypes import ULP_NAN

    v = np.asarray(values, dtype=np.int64)
    nan = v >= ULP_NAN
    data = np.ma.masked_array(np.where(nan, 0, v).astype(np.float64), mask=nan)
    top = max(1, int(np.abs(data).max()) if data.count() else 1)
    norm, ticks, scale = _ulp_norm(top, signed)
    import matplotlib

    cmap = matplotlib.colormaps["RdBu_r" if signed else "magma_r"].with_extremes(bad="0.75")
    image = ax.imshow(data, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    cbar = fig.colorbar(image, ax=ax, shrink=0.85, pad=0.02, ticks=ticks)
    cbar.set_label(bar + scale, fontsize=8.5)
    cbar.ax.set_yticklabels([f"{int(k):+,}" if signed and k else f"{int(k):,}" for k in ticks], fontsize=8)
    ax.set_yticks(range(len(ylabels)), ylabels, fontsize=8)
    ax.set_xticks(range(len(xlabels)), xlabels, fontsize=8, rotation=90)
    ax.set_title(title, fontsize=10)
    widest = max((len(f"{int(u):+,}") for u in np.asarray(v).ravel() if np.isfinite(u)), default=0)
    if v.size <= 400 and widest * 4.5 <= 72 * 6.5 / max(1, v.shape[1]):  # numbers only where they fit their cell
        for (i, j), u in np.ndenumerate(v):
            if signed and u == 0:  # the same bits as hole #1: the blank cells are the point
                continue
            red, green, blue, _ = cmap.get_bad() if nan[i, j] else cmap(norm(u))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            ax.text(j, i, "NaN" if nan[i, j] else f"{u:+,}" if signed else f"{u:,}", ha="center", va="center",
                    fontsize=7, color="white" if dark else "black")


def _ulp_norm(top: int, signed: bool):
    """(colour norm, colour-bar ticks, scale words): one colour per count up to 12 ULPs, a linear scale
    up to 100, a symmetric-log one beyond (0 stays visible on every one)."""
    from matplotlib.colors import BoundaryNorm, Normalize, SymLogNorm
    from matplotlib.ticker import MaxNLocator

    low = -top if signed else 0
    if top <= 12:
        step = 1 if top <= 6 else 2
        return BoundaryNorm(np.arange(low - 0.5, top + 1.0), 256), [k for k in range(low, top + 1) if k % step == 0], ""
    if top <= 100:
        return Normalize(vmin=low, vmax=top), [int(k) for k in MaxNLocator(8, integer=True).tick_values(low, top)
                                                if low <= k <= top], ""
    decades = [10 ** e for e in range(int(np.log10(top)) + 1)]
    ticks = ([-d for d in reversed(decades)] if signed else []) + [0] + decades
    return SymLogNorm(linthresh=1.0, vmin=low, vmax=top, base=10), ticks, " (symmetric log scale)"
