"""The answer of a model's report page in plain words, and the numbers it states.

:func:`facts` takes the numbers straight from a :class:`~blackholes.analysis.groups.ScanResult`;
:func:`answer` says them as the page's opening paragraphs. The small formatters here
(token text, ULP counts, id ranges, code spans) are shared by the page's tables and plots.

>>> id_ranges([1, 2, 3, 7])
'1–3, 7'
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_APART = 10  # candidates needed before a gap among them means anything
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
REFERENCE_WORDS = {"holes": "hole members", "padding": "padding rows", "unused": "unused tokens"}
MATRIX_WORDS = {"input": "input embedding", "output": "output (unembedding) matrix"}


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
    return [f"**Who they are**: {counted_words(f.categories, CATEGORY_WORDS)}; "
            f"scripts: {counted_words(real_scripts(f.scripts))}."]


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
                f"at most {ulps_text(far)} from their cluster's largest hole. {grid}.")
        if r.categories is not None:
            counts = r.categories.count_by(f.halo_rows, "category")
            line += (f" They are {counted_words(counts, CATEGORY_WORDS)}." if f.halo != 1
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
                f"{ulps_text(spread)}: unrelated points{chain}.")
    return (f"**How the holes differ**: {where}the {H} hole vectors agree in {D - C:,} of {D:,} coordinates and "
            f"differ only in {C:,} ({shown}), by at most {ulps_text(spread)}{chain}.")


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
        who = ": " + ", ".join(token_text(r, i) for i in further[:min(n, 8)]) + (", …" if n > 8 else "") if named else ""
        line += (f" **{n:,} of them stand{'s' if n == 1 else ''} apart** (at most {last:.3g}; the next at "
                 f"{following:.3g}){who} — "
                 "likely under-trained; the rest fill the percentile.")
    else:
        line += " No group stands apart from the rest: the percentile alone sets how many there are."
    if named and further:
        line += f" All {len(further):,} by category: {counted_words(r.categories.count_by(further, 'category'))}."
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


def counted_words(counts: dict, names: dict | None = None, limit: int = 5) -> str:
    """Counts in words, most common first: "200 unused / reserved slots, 67 padding rows, …" with
    ``names``, else "Thai 40, Han 12".

    >>> counted_words({"Thai": 40, "Han": 12})
    'Thai 40, Han 12'
    """
    items = list(counts.items())
    if not items:
        return "none"
    parts = [f"{n:,} {names.get(k, k)}" if names is not None else f"{k} {n:,}" for k, n in items[:limit]]
    if len(items) > limit:
        parts.append(f"{sum(n for _, n in items[limit:]):,} others")
    return ", ".join(parts)


def real_scripts(scripts: dict) -> dict:
    """Scripts without "none" (no text: padding, special), unless that is all there is."""
    real = {k: n for k, n in scripts.items() if k != "none"}
    return real or scripts


def _pct(part: int, whole: int) -> str:
    share = 100 * part / whole if whole else 0.0
    return "<0.01%" if part and share < 0.01 else f"{share:.2f}%"


def ulps_text(u) -> str:
    from blackholes.io.dtypes import ULP_NAN

    u = int(u)
    return "NaN (a NaN coordinate)" if u >= ULP_NAN else f"{u:,} ULP{'s' if u != 1 else ''}"


def ulp_cell(u) -> str:
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


def as_code(text: str) -> str:
    """User text (a path, a tensor name) as a code span."""
    return "`" + str(text).replace("`", "\\x60").replace("*", "\\x2a") + "`"


def token_text(r, i: int) -> str:
    """Token ``i`` as the page shows it: its text, "padding row", or just its id without a tokenizer."""
    i = int(i)
    if r.categories is not None and i in r.categories:
        text = r.categories[i].text
        return "padding row" if text is None else _literal(text)
    return f"`{i}`"


def token_category(r, i: int) -> tuple[str, str]:
    if r.categories is not None and int(i) in r.categories:
        info = r.categories[int(i)]
        return info.category, info.script
    return "–", "–"


def cell_counts(counts: dict, limit: int = 3) -> str:
    items = list(counts.items())
    return ", ".join(f"{k} {n:,}" for k, n in items[:limit]) + (", …" if len(items) > limit else "")


def matrix_name(r) -> str:
    """A short name for titles: a model id as given, a folder or file by its name (a generic file name such
    as ``model.safetensors`` with its folder's); the tensor after it."""
    source = str(r.source)
    if "://" in source or os.sep in source or source.startswith((".", "~")):
        path = Path(source.rstrip("/"))
        generic = path.suffix and path.name.startswith(("model", "consolidated", "pytorch_model"))
        source = (f"{path.parent.name}/{path.name}" if generic and path.parent.name else path.name) or source
    return source if r.key in (None, "", "<array>") else f"{source} [{r.key}]"


def page_title(parts) -> str:
    r = parts[0][1]
    name = matrix_name(r) if len(parts) == 1 else matrix_name(r).split(" [")[0]
    return "Black-hole tokens in " + re.sub(r"[`*]", "", name)
