"""The page ``reproduce`` writes: the answer in plain words first, then the evidence.

:func:`answer` is the opening (how many tokens are dead, whether they move as one body,
from which step the hole freezes, and what the census of every group saw);
:func:`document` the whole page as a :class:`~blackholes.render.page.Document`.
"""

from __future__ import annotations

import json
from pathlib import Path

from blackholes.analysis.ids import format_bytes
from blackholes.render.page import Document


def _census_section(doc: Document, r) -> None:
    """How many holes exist at each step, the events, and when each part of the matrix froze."""
    c = r.census
    doc.heading("Every group at every step (census)", 3)
    doc.para(census_words(r))
    ev = [e for e in c.events][:12]
    if ev:
        doc.table(["step", "event", "before", "after"],
                  [[f"{e.step:,}", e.kind, _parts(e.before), _parts(e.after)] for e in ev])
    names = {"matrix": "the whole matrix", "holes": "the final holes' rows", "trained": "the trained tokens",
             "never_seen": "the never-seen tokens"}
    doc.table(["rows", "never change again from step"],
              [[names.get(k, k), "still moving at the end" if v is None else f"{v:,}"]
               for k, v in c.frozen_from.items() if v is not None or k in ("matrix", "holes")])


def _parts(group) -> str:
    """A set of tokens, or several sets separated by bars (an event's before or after)."""
    if group and isinstance(group[0], (list, tuple)):
        shown = " | ".join(_code_tokens(sorted(part), 6) for part in group[:4])
        return shown + (f" | … (+{len(group) - 4} parts)" if len(group) > 4 else "")
    return _code_tokens(sorted(group), 8)


def census_words(r) -> str:
    """One sentence on the census: holes at the first and last step, the events, the holes' freeze."""
    c = r.census
    kinds = [e.kind for e in c.events]
    first, last = int(c.holes[0]), int(c.holes[-1])
    events = (f"{kinds.count('fission'):,} fission(s) and {kinds.count('merger'):,} merger(s)" if kinds
              else "no fission and no merger")
    frozen = c.frozen_from.get("holes")
    freeze = ("the final holes' rows never change again from step " + f"{frozen:,}") if frozen is not None else (
        "the final holes' rows still move at the last step")
    precision = r.config.get("precision") or r.config.get("dtype")
    physics = ""
    if precision and precision != "bf16" and r.hole_tokens:
        physics = (f" In {precision} the hole " + ("still freezes" if frozen is not None else "does not freeze")
                   + " — compare a bf16 run to tell the physics from the rounding.")
    return (f"Counted exactly at every one of the {len(c.steps):,} recorded steps: {first:,} hole(s) "
            f"({int(c.tokens_in_holes[0]):,} tokens) at step {int(c.steps[0]):,}, {last:,} "
            f"({int(c.tokens_in_holes[-1]):,} tokens) at step {int(c.steps[-1]):,}; {events}; {freeze}.{physics}")


def numerics_words(r) -> str:
    """Which numerics trained the run and, where the other numerics ran too (``--compare-numerics``),
    whether the freeze step and the holes belong to the recipe or to its rounding."""
    mine = getattr(r, "numerics", None) or r.config.get("numerics") or "eager"
    how = {"eager": "PyTorch's kernels one op at a time, the original's rounding and the reference",
           "compiled": "torch.compile's fused kernels, a rounding of their own"}.get(mine, mine)
    text = f"trained with **{mine} numerics** ({how})."
    c = getattr(r, "numerics_comparison", None)
    if not c:
        return text
    other = next(k for k in c if k not in (mine, "first_difference_step", "freeze"))
    a, b = c[mine], c[other]

    def state(x):
        frozen = "never freezes for good" if x["frozen_from"] is None else f"freezes from step {x['frozen_from']:,}"
        return f"the hole {frozen}, {x['holes']:,} hole(s), {x['hole_tokens']:,} token(s) in the black hole"

    first = c["first_difference_step"]
    parted = (f"the two embedding matrices first differ at step {first:,}" if first is not None
              else "the two runs are bit-identical at every recorded step")
    if c["freeze"] == "recipe":
        verdict = "so the freeze and the holes are a **property of the recipe**: both rounding paths give them"
    elif c.get("holes") == "recipe":
        verdict = ("so the holes are a **property of the recipe**, but the freeze step **depends on the rounding**")
    else:
        verdict = "so the freeze and the holes **depend on the rounding**, not on the recipe alone"
    return (f"{text} The same run with {other} numerics: {parted}; {mine}: {state(a)}; {other}: {state(b)} — "
            f"{verdict}.")


def answer(r) -> list[str]:
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
    if r.census is not None:
        lines.append("**Every group, every step**: " + census_words(r))
    lines.append("**Numerics**: " + numerics_words(r))
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


def document(r, plots: dict[str, Path]) -> Document:
    cfg = r.config
    doc = Document("Black-hole tokens: a reproduction", r.out_dir)
    start = ("every embedding row starting at one shared point" if cfg["sigma"] == 0
             else "every embedding row starting at its own point, scattered around one shared centre")
    doc.para(
        f"A {cfg['layers']}-layer byte-level GPT (width {cfg['width']}) trained for {int(r.train.steps_done):,} steps on "
        f"`{Path(cfg['corpus_path']).name}` with {start} "
        f"(sigma = {cfg['sigma']:g}, seed {cfg['seed']}, {cfg['dtype']}, {cfg.get('numerics', 'eager')} numerics). "
        "Every step was recorded and analysed "
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

    _dynamics_section(doc, r)

    if r.census is not None:
        _census_section(doc, r)

    _plots_section(doc, r, plots)

    doc.heading("Files", 3)
    doc.table(["file", "what"], [[f"`{p.relative_to(r.out_dir).as_posix()}`", _FILE_WHAT.get(k, k)]
                                 for k, p in r.files.items() if k not in plots and k != "report_html"])

    doc.heading("How this was made")
    doc.code(r.command)
    doc.table(["setting", "value"], [[k, _short(v)] for k, v in r.config.items()])
    doc.table(["software", "version"], [[k, v] for k, v in r.versions.items()])
    doc.table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in r.seconds.items()])
    return doc


def _dynamics_section(doc: Document, r) -> None:
    """Does the hole move as one body: identity per quantity, the sampled steps, the freezing."""
    d = r.dynamics
    if d is None:
        return
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


def _plots_section(doc: Document, r, plots: dict[str, Path]) -> None:
    """The plots, each with its caption."""
    doc.heading("Plots", 3)
    captions = {
        "census": "Every group at every recorded step, exactly: the number of black holes and the tokens in them, "
                  "with the steps where a hole split (fission) or rows became identical (merger) marked.",
        "census_last_motion": "The last step at which each token's row changed any bit: dead tokens against "
                              "trained ones.",
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


def _code_tokens(ids: list[int], limit: int = 12) -> str:
    """A few byte ids as code spans: `(` `)`."""
    shown = " ".join(f"`{t}`" for t in format_bytes(ids[:limit]).split(" "))
    return shown + (f" … (+{len(ids) - limit})" if len(ids) > limit else "")


def _short(value, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
