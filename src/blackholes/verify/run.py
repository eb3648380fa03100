"""``verify``: ask the model itself whether it can produce each token (magikarp's method, batched).

Land & Bartolo (2024), "Fishing for Magikarp: Automatically Detecting Under-trained Tokens in Large Language
Models": a token the model does not repeat back, even when shown it again and again, is verified as
under-trained. The prompts are in :mod:`blackholes.verify.prompts`, the batched engine in
:mod:`blackholes.verify.engine`, the verdicts' record in :mod:`blackholes.verify.result`.

Resumable: with ``store`` (a ``.jsonl`` file) every verdict is appended as soon as its batch is done, and a second
run with the same store skips the tokens it holds. Ctrl-C (or SIGTERM) stops after the batch in progress is
dropped: the verdicts done so far are kept, and the result says ``complete: False``.

>>> v = verify("model_dir", [5, 9], progress=False)             # doctest: +SKIP
>>> [t.verdict for t in v.tokens]                               # doctest: +SKIP
['weak_verified', 'strong_rejected']
"""

from __future__ import annotations

import time

from blackholes.errors import BlackholesError
from blackholes.verify.engine import STEPS, THRESHOLDS, Engine, verdict
from blackholes.verify.model import check_memory, dtype_name, load, locate, pick_device, vocabulary_rows
from blackholes.verify.prompts import choose_placeholder, encodable
from blackholes.verify.result import TokenVerdict, Verification

METHODS = ("magikarp",)
DEFAULT_BATCH = 16


def verify(source: str, tokens, *, method: str = "magikarp", device: str | None = "auto", dtype: str | None = None,
           batch_size: int = DEFAULT_BATCH, store=None, progress: bool = True, skip_rejected: bool = True,
           loaded=None) -> Verification:
    """Verdicts for ``tokens`` (ids, or "all") of the model at ``source``.

    ``loaded``: an already loaded (model, tokenizer); ``store``: a :class:`blackholes.io.jsonl.JsonlStore` to append
    the verdicts to (and resume from); ``skip_rejected=False`` runs every prompt for every token."""
    if method not in METHODS:
        raise BlackholesError(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    if batch_size < 1:
        raise BlackholesError(f"--batch-size must be at least 1, got {batch_size}")
    device = pick_device(device)
    dtype = dtype_name(dtype, device)
    if loaded is None:
        files = locate(source)
        _check_ids(tokens, vocabulary_rows(files))  # before loading: no wait for a refusal
        check_memory(files, dtype, device)
        model, tokenizer = load(files, dtype, device)
    else:
        model, tokenizer = loaded
    rows = model.get_input_embeddings().weight.shape[0]
    tokens = list(range(rows)) if isinstance(tokens, str) and tokens == "all" else sorted({int(t) for t in tokens})
    _check_ids(tokens, rows)
    vocab = min(rows, len(tokenizer))
    pid, ptext, prompts = choose_placeholder(tokenizer, vocab, tokenizer.all_special_ids)
    _check_context(model.config, prompts)
    result = Verification(method, str(source), dtype, dict(THRESHOLDS), {"id": pid, "text": ptext}, 0.0,
                          device=device)
    done = _resume(store, result)
    todo = [t for t in tokens if t not in done]
    t0 = time.perf_counter()
    engine = Engine(model, prompts, device=device)
    try:
        _run(engine, tokenizer, todo, batch_size, store, done, progress, skip_rejected)
    except KeyboardInterrupt:
        result.complete = False
    result.seconds = time.perf_counter() - t0
    result.tokens = [done[t] for t in tokens if t in done]
    return result


def _run(engine: Engine, tokenizer, todo: list[int], batch_size: int, store, done: dict, progress: bool,
         skip_rejected: bool) -> None:
    from tqdm import tqdm

    with tqdm(total=len(todo), unit="token", desc="verify", disable=not progress, leave=False) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            verdicts = verify_batch(engine, tokenizer, chunk, skip_rejected=skip_rejected)
            if store is not None:
                store.append([{"token": v.to_json()} for v in verdicts])
            done.update((v.id, v) for v in verdicts)
            bar.update(len(chunk))


def verify_batch(engine: Engine, tokenizer, ids: list[int], *, skip_rejected: bool = True) -> list[TokenVerdict]:
    """The verdicts of ``ids``, every prompt in turn, the shortest first; a token already above the
    strong-rejection threshold is left out of the later prompts (its maximum can only grow, so its verdict cannot
    change, and the longest prompt is the one most often saved)."""
    best = {t: float("-inf") for t in ids}
    probs = {}
    for t in ids:
        probs[t] = {p.name: None for p in engine.prompts}  # the prompts' own order, whatever order they run in
    for k in engine.order:
        prompt = engine.prompts[k]
        run = [t for t in ids if not (skip_rejected and best[t] > THRESHOLDS["strong_rejected"])]
        if not run:
            continue
        scores = engine.score(k, run)
        for t, row in zip(run, scores):
            p = float(max(x for x in row.tolist() if x == x))  # NaN after an end-of-sequence token: not scored
            probs[t][prompt.name] = p
            best[t] = max(best[t], p)
    out = []
    for t in ids:
        enc = {p.name: encodable(tokenizer, p, t) for p in engine.prompts}
        out.append(TokenVerdict(t, token_text(tokenizer, t), best[t], verdict(best[t]), probs[t], enc))
    return out


def token_text(tokenizer, token_id: int) -> str | None:
    """The token's decoded text, or its vocabulary piece when the text is not readable on its own."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    text = tokenizer.decode([int(token_id)])
    return piece if (not text or "\ufffd" in text) else text


def _resume(store, result: Verification) -> dict:
    """The verdicts a store already holds for this model, method, dtype and placeholder; a store written for
    anything else is refused (its verdicts would not be these)."""
    if store is None:
        return {}
    head = {"method": result.method, "model": result.model, "dtype": result.dtype,
            "placeholder": result.placeholder, "thresholds": result.thresholds}
    rows = store.rows()
    if not rows:
        store.append({"verification": head})
        return {}
    first = rows[0].get("verification")
    if first != head:
        raise BlackholesError(f"{store.path} holds verdicts of another run ({_describe(first)}); remove it or "
                              f"write elsewhere")
    done = {}
    for row in rows[1:]:
        if isinstance(row.get("token"), dict):
            v = TokenVerdict.from_json(row["token"])
            done[v.id] = v
    return done


def _check_context(config, prompts) -> None:
    """The longest prompt and its continuation must fit the model's context (positions beyond it are not ones the
    model was made for; learned position tables have no row for them)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    context = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    longest = max(len(p.ids) for p in prompts) + STEPS - 1
    if isinstance(context, int) and longest > context:
        raise BlackholesError(f"the verification prompts take {longest:,} positions with this tokenizer, more than "
                              f"the model's context of {context:,}")


def _check_ids(tokens, rows: int | None) -> None:
    if rows is None or isinstance(tokens, str):
        return
    bad = sorted(t for t in {int(t) for t in tokens} if not 0 <= t < rows)
    if bad:
        raise BlackholesError(f"token ids out of range: {_short(bad)} (the model has {rows:,} tokens: 0-{rows - 1})")


def _describe(head) -> str:
    if not isinstance(head, dict):
        return "not a verification store"
    return ", ".join(f"{k} {head.get(k)!r}" for k in ("model", "method", "dtype"))


def _short(ids: list[int], n: int = 10) -> str:
    return ", ".join(map(str, ids[:n])) + (f", ... ({len(ids):,} in all)" if len(ids) > n else "")
