"""Export what a scan found as the masks generation engines read.

A scan JSON (``blackholes scan --json``) names the dead tokens; each engine already takes a
list of tokens to keep out of generation, in its own words:

========================  ==================================================================
``--to transformers``     a ``generation_config.json`` with ``suppress_tokens``
                          (``GenerationConfig.from_pretrained`` loads it; ``base`` is merged
                          into a copy, never edited in place)
``--to vllm``             ``{"logit_bias": {"ID": -100.0, ...}}``, for ``SamplingParams``
``--to llama.cpp``        ``--logit-bias ID-inf ...`` arguments (a text file) and, beside it,
                          ``NAME.server.json``: llama-server's ``{"logit_bias": [[ID, false], ...]}``
``--to ids``              a plain JSON list of ids
========================  ==================================================================

The token set is named like ``holes``, ``holes,verified``, ``candidates`` or ids
(``151643-151650,7``), combinable with commas. Special tokens a chat template needs
(end of text or turn, begin of text, padding) are kept unless they are named by id;
the result says which were kept and why.

>>> import blackholes
>>> from blackholes.io.atomic import write_json
>>> write_json("scan.json", blackholes.scan("model.safetensors").to_json())   # rows 8-15 and 40-43: holes
>>> r = export("scan.json", to="ids", out="dead.json")
>>> r.tokens[:3], len(r.tokens), r.kept
([8, 9, 10], 12, {})
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from blackholes.errors import BlackholesError

FORMATS = ("transformers", "vllm", "llama.cpp", "ids")
SETS = ("holes", "verified", "candidates")
VERIFIED_BELOW = 0.01  # a verified token's highest probability under every prompt the verifier tried
VLLM_BIAS = -100.0  # vLLM (like OpenAI's API) takes biases in [-100, 100]; -100 removes a token in practice
# ids a chat template needs, as models' configs and GGUF metadata name them
CONFIG_KEYS = ("eos_token_id", "bos_token_id", "pad_token_id", "eot_token_id", "decoder_start_token_id")
GGUF_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eot_token_id",
             "tokenizer.ggml.eom_token_id", "tokenizer.ggml.padding_token_id")
TOKENIZER_KEYS = ("eos_token", "bos_token", "pad_token")
# special tokens whose text says they open or close a text or a turn (when no config names them)
TEMPLATE_TEXT = re.compile(r"^(<\|?(end|eos|eot|bos|begin|start|pad|im_start|im_end|endoftext|end_of_text|"
                           r"begin_of_text|start_of_turn|end_of_turn|eom_id|eot_id)[^>]*\|?>|</?s>)$", re.I)


@dataclass
class ExportResult:
    """What :func:`export` wrote: the suppressed ids, the special tokens it kept, the files."""

    to: str
    files: list[Path]
    tokens: list[int]  # suppressed, sorted
    kept: dict[int, str] = field(default_factory=dict)  # special token id -> why it was kept
    sets: dict[str, int] = field(default_factory=dict)  # each named set's size before keeping
    scan: str = ""
    notes: list[str] = field(default_factory=list)  # e.g. the model's files were not found

    def to_json(self) -> dict:
        return {"to": self.to, "files": [str(p) for p in self.files], "tokens": self.tokens,
                "suppressed": len(self.tokens), "kept": {str(k): v for k, v in sorted(self.kept.items())},
                "sets": self.sets, "scan": self.scan, "notes": self.notes}


# ---------------------------------------------------------------------------- the scan JSON


def read_scan(path: str | os.PathLike) -> dict:
    """A scan JSON (one matrix, or ``--matrix both``'s two), read as untrusted input.

    >>> import blackholes
    >>> from blackholes.io.atomic import write_json
    >>> write_json("scan.json", blackholes.scan("model.safetensors").to_json())
    >>> read_scan("scan.json")["shape"]
    [64, 8]
    """
    from blackholes.io.paths import input_file
    from blackholes.io.untrusted import parse_json

    path = input_file(path, "scan JSON")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BlackholesError(f"cannot read {path}: {e.strerror or e}") from None
    doc = parse_json(raw, what=path.name)
    if not isinstance(doc, dict) or not matrices(doc):
        raise BlackholesError(f"{path} is not a scan JSON (`blackholes scan --json` writes one)")
    return doc


def matrices(doc: dict) -> list[dict]:
    """The matrix reports of a scan JSON: itself, or each of ``matrices`` (``--matrix both``)."""
    if isinstance(doc.get("matrices"), dict):
        return [m for m in doc["matrices"].values() if isinstance(m, dict) and _shape(m)]
    return [doc] if _shape(doc) else []


def _shape(doc: dict) -> tuple[int, int] | None:
    shape = doc.get("shape")
    if isinstance(shape, list) and len(shape) == 2 and all(_is_id(s) and s > 0 for s in shape):
        return int(shape[0]), int(shape[1])
    return None


def vocab_rows(doc: dict) -> int:
    """Rows of the scanned matrix (every id must be below it)."""
    return min(_shape(m)[0] for m in matrices(doc))


def _is_id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _ids(values, where: str, rows: int) -> list[int]:
    """Token ids from untrusted JSON: non-negative integers below ``rows``, or one line."""
    if not isinstance(values, list):
        raise BlackholesError(f"scan JSON: {where} is not a list")
    bad = [v for v in values if not _is_id(v) or v >= rows]
    if bad:
        raise BlackholesError(f"scan JSON: {where} holds {bad[0]!r}, not a token id of the {rows:,}-row matrix")
    return values


def holes(doc: dict) -> list[int]:
    """Every token in a black hole, in any matrix the scan holds."""
    rows, out = vocab_rows(doc), set()
    for m in matrices(doc):
        if not isinstance(m.get("groups") or [], list):
            raise BlackholesError("scan JSON: groups is not a list")
        for i, g in enumerate(m.get("groups") or []):
            if not isinstance(g, dict):
                raise BlackholesError(f"scan JSON: group {i + 1} is not an object")
            out.update(_ids(g.get("token_ids"), f"group {i + 1}'s token_ids", rows))
    return sorted(out)


def candidates(doc: dict) -> list[int]:
    """The under-trained candidates (``scan --indicators``) of any matrix the scan holds."""
    rows, out, found = vocab_rows(doc), set(), False
    for m in matrices(doc):
        listed = m.get("candidates")
        if listed is None:
            continue
        found = True
        if not isinstance(listed, list):
            raise BlackholesError("scan JSON: candidates is not a list")
        out.update(_ids([c.get("id") if isinstance(c, dict) else c for c in listed], "candidates", rows))
    if not found:
        raise BlackholesError("the scan has no candidates: scan with --indicators for the 'candidates' set")
    return sorted(out)


def verification(doc: dict) -> list[dict] | None:
    """The verifier's per-token verdicts (``verification.tokens``), wherever the scan JSON holds them."""
    for where in [doc, *matrices(doc)]:
        section = where.get("verification")
        if isinstance(section, dict) and isinstance(section.get("tokens"), list):
            return section["tokens"]
    return None


def verified(doc: dict) -> list[int]:
    """Tokens the verifier found never produced: highest probability below 1 %."""
    tokens = verification(doc)
    if tokens is None:
        raise BlackholesError("the scan carries no verdicts: run `blackholes scan MODEL --verify --json ...` "
                              "for the 'verified' set")
    rows, out = vocab_rows(doc), set()
    for i, t in enumerate(tokens):
        p = t.get("max_prob") if isinstance(t, dict) else None
        if not isinstance(p, (int, float)) or isinstance(p, bool):
            raise BlackholesError(f"scan JSON: verification token {i + 1} has no max_prob number")
        if p < VERIFIED_BELOW:
            out.update(_ids([t.get("id")], f"verification token {i + 1}'s id", rows))
    return sorted(out)


SET_READERS = {"holes": holes, "verified": verified, "candidates": candidates}


def token_set(doc: dict | None, spec: str, rows: int) -> tuple[list[int], dict[str, int], list[int]]:
    """(ids, size of each named set, ids named explicitly) of ``spec``: set names and ids, comma-separated.

    >>> token_set({"shape": [10, 4], "groups": [{"token_ids": [2, 3]}]}, "holes,7-8", 10)
    ([2, 3, 7, 8], {'holes': 2, 'ids': 2}, [7, 8])
    """
    from blackholes.analysis.ids import parse_tokens

    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise BlackholesError("no tokens named: give holes, verified, candidates or ids such as 5,7-9")
    names = [p for p in parts if p in SETS]
    unknown = [p for p in parts if p not in SETS and not re.fullmatch(r"[0-9]+(-[0-9]+)?", p)]
    if unknown:
        raise BlackholesError(f"unknown token set {unknown[0]!r}: use {', '.join(SETS)} or ids such as 5,7-9")
    explicit = parse_tokens(",".join(p for p in parts if p not in SETS), vocab=rows) if len(names) < len(parts) else []
    chosen, sizes = set(explicit), {}
    for name in dict.fromkeys(names):
        if doc is None:
            raise BlackholesError(f"the {name!r} set needs a scan JSON (--from SCAN.json)")
        ids = SET_READERS[name](doc)
        sizes[name] = len(ids)
        chosen.update(ids)
    if explicit:
        sizes["ids"] = len(explicit)
    return sorted(chosen), sizes, explicit


# ---------------------------------------------------------------------------- special tokens


def model_path(doc: dict) -> Path | None:
    """The model file the scan read, when it is still there (a scan from elsewhere names none here)."""
    path = next((m.get("path") for m in matrices(doc) if isinstance(m.get("path"), str)), None)
    return Path(path) if path and Path(path).is_file() else None


def special_tokens(doc: dict) -> dict[int, str]:
    """Ids a chat template needs, and where each was found: the model's config files or GGUF
    metadata when the scanned model is still where the scan read it, else the scan's own token
    categories (a special/control token whose text opens or closes a text or a turn)."""
    found: dict[int, str] = {}
    path = model_path(doc)
    if path is not None:
        from blackholes.sources.load import is_gguf

        found.update(_from_gguf(path) if is_gguf(path) else _from_folder(path.parent))
    for m in matrices(doc):
        for g in m.get("groups") or []:
            if isinstance(g, dict):
                found.update({i: why for i, why in _from_categories(g).items() if i not in found})
    return found


def _from_categories(group: dict) -> dict[int, str]:
    ids, texts = group.get("token_ids"), group.get("tokens")
    kinds = group.get("category") or group.get("token_types")
    if not (isinstance(ids, list) and isinstance(texts, list) and isinstance(kinds, list)):
        return {}
    return {i: f"special token {t!r} (scan category)" for i, t, k in zip(ids, texts, kinds)
            if _is_id(i) and k in ("special", "control") and isinstance(t, str) and TEMPLATE_TEXT.match(t.strip())}


def _from_gguf(path: Path) -> dict[int, str]:
    from blackholes.sources.gguf import read_gguf_header

    meta = read_gguf_header(path).metadata
    return {int(meta[k]): f"{k} in {path.name}" for k in GGUF_KEYS if _is_id(meta.get(k))}


def _from_folder(folder: Path) -> dict[int, str]:
    """eos/bos/pad/eot ids of config.json and generation_config.json, and the ids of
    tokenizer_config.json's eos/bos/pad tokens in tokenizer.json's added tokens."""
    found: dict[int, str] = {}
    for name in ("generation_config.json", "config.json"):
        doc = _json_file(folder / name)
        for key in CONFIG_KEYS:
            value = doc.get(key)
            for v in value if isinstance(value, list) else [value]:
                if _is_id(v):
                    found.setdefault(v, f"{key} in {name}")
    names = {k: _token_name(_json_file(folder / "tokenizer_config.json").get(k)) for k in TOKENIZER_KEYS}
    added = _json_file(folder / "tokenizer.json").get("added_tokens")
    for token in added if isinstance(added, list) else []:
        if not isinstance(token, dict) or not _is_id(token.get("id")):
            continue
        for key, text in names.items():
            if text is not None and token.get("content") == text:
                found.setdefault(token["id"], f"{key} {text!r} in tokenizer_config.json")
    return found


def _token_name(value) -> str | None:
    if isinstance(value, dict):  # the older {"content": "</s>", ...} form
        value = value.get("content")
    return value if isinstance(value, str) else None


def _json_file(path: Path) -> dict:
    """A model's JSON file as a dict ({} when absent or not an object); parsed as untrusted input."""
    if not path.is_file():
        return {}
    from blackholes.io.untrusted import parse_json

    doc = parse_json(path.read_bytes(), what=path.name)
    return doc if isinstance(doc, dict) else {}


# ---------------------------------------------------------------------------- the formats


def server_json_path(out: str | os.PathLike) -> Path:
    """Where ``--to llama.cpp`` puts llama-server's JSON beside the argument file.

    >>> server_json_path("dead.args")
    PosixPath('dead.server.json')
    """
    out = Path(out)
    return out.with_name(out.stem + ".server.json")


def llama_arguments(ids: list[int]) -> str:
    """llama.cpp's ``--logit-bias TOKEN_ID(+/-)BIAS`` for each id, -inf: never sampled.

    >>> llama_arguments([5, 9])
    '--logit-bias 5-inf --logit-bias 9-inf\\n'
    """
    return " ".join(f"--logit-bias {i}-inf" for i in ids) + "\n"


def generation_config(ids: list[int], base: dict | None = None) -> dict:
    """A generation config with ``ids`` added to ``suppress_tokens`` (``base``'s kept, merged).

    >>> generation_config([7, 3], {"eos_token_id": 2, "suppress_tokens": [9]})
    {'eos_token_id': 2, 'suppress_tokens': [3, 7, 9]}
    """
    doc = dict(base or {})
    old = doc.get("suppress_tokens") or []
    if not isinstance(old, list) or not all(_is_id(v) for v in old):
        raise BlackholesError("--base: suppress_tokens is not a list of token ids")
    doc["suppress_tokens"] = sorted(set(old) | set(ids))
    return doc


def _documents(to: str, ids: list[int], base: dict | None) -> list[tuple[str, str]]:
    """(suffix role, text) of each file ``to`` writes: the main one first."""
    if to == "transformers":
        return [("main", _dump(generation_config(ids, base)))]
    if to == "vllm":
        return [("main", _dump({"logit_bias": {str(i): VLLM_BIAS for i in ids}}))]
    if to == "llama.cpp":
        return [("main", llama_arguments(ids)), ("server", _dump({"logit_bias": [[i, False] for i in ids]}))]
    return [("main", _dump(ids))]


def _dump(obj) -> str:
    return json.dumps(obj, indent=2, allow_nan=False) + "\n"


# ---------------------------------------------------------------------------- API


def export(scan, *, to: str, out: str | os.PathLike, tokens: str = "holes", base: str | os.PathLike | None = None,
           keep: list[str] | tuple = ()) -> ExportResult:
    """Write the tokens ``tokens`` names (of the scan JSON ``scan``) in ``to``'s format to ``out``.

    Special tokens a chat template needs are kept out of the set unless named by id in
    ``tokens``; ``keep`` keeps more (ids or token texts). ``base``: a generation_config.json to
    merge into (``to="transformers"``; written to ``out``, never in place).

    >>> import blackholes
    >>> from blackholes.io.atomic import write_json
    >>> write_json("scan.json", blackholes.scan("model.safetensors").to_json())
    >>> export("scan.json", to="vllm", out="bias.json").files
    [PosixPath('bias.json')]
    """
    from blackholes.io.atomic import write_text
    from blackholes.io.paths import check_outputs

    if to not in FORMATS:
        raise BlackholesError(f"unknown format {to!r}; one of {', '.join(FORMATS)}")
    if base is not None and to != "transformers":
        raise BlackholesError("--base is a generation_config.json to merge into: it goes with --to transformers")
    files = [Path(out)] + ([server_json_path(out)] if to == "llama.cpp" else [])
    check_outputs(files, inputs=[scan, base])
    doc = read_scan(scan)
    ids, sizes, explicit = token_set(doc, tokens, vocab_rows(doc))
    kept = _kept(doc, ids, explicit, keep)
    ids = [i for i in ids if i not in kept]
    if not ids:
        raise BlackholesError(f"the token set {tokens!r} is empty" + (" once the special tokens are kept" if kept else "")
                              + ": nothing to export")
    base_doc = _base(base) if base is not None else None
    for path, (_, text) in zip(files, _documents(to, ids, base_doc)):
        write_text(path, text)
    notes = [] if model_path(doc) is not None else [
        "the scanned model's files are not where the scan read them: chat-template tokens were taken from the "
        "scan's token categories only"]
    return ExportResult(to=to, files=files, tokens=ids, kept=kept, sets=sizes, scan=str(scan), notes=notes)


def _kept(doc: dict, ids: list[int], explicit: list[int], keep) -> dict[int, str]:
    """The ids of the set kept out of it: chat-template tokens not named by id, and ``keep``."""
    chosen, named = set(ids), set(explicit)
    kept = {i: why for i, why in special_tokens(doc).items() if i in chosen and i not in named}
    texts = _texts(doc)
    for name in keep:
        name = str(name)
        hits = [int(name)] if name.isdigit() else [i for i, t in texts.items() if t == name]
        if not hits:
            raise BlackholesError(f"--keep {name!r}: no token of the scan has this id or text")
        kept.update({i: "--keep" for i in hits if i in chosen})
    return kept


def _texts(doc: dict) -> dict[int, str]:
    """Token id -> text, as far as the scan JSON shows them (holes, candidates, verdicts)."""
    out: dict[int, str] = {}
    for m in matrices(doc):
        for g in m.get("groups") or []:
            if isinstance(g, dict) and isinstance(g.get("token_ids"), list) and isinstance(g.get("tokens"), list):
                out.update({i: t for i, t in zip(g["token_ids"], g["tokens"]) if _is_id(i) and isinstance(t, str)})
        for c in m.get("candidates") or []:
            if isinstance(c, dict) and _is_id(c.get("id")) and isinstance(c.get("text"), str):
                out.setdefault(c["id"], c["text"])
    for t in verification(doc) or []:
        if isinstance(t, dict) and _is_id(t.get("id")) and isinstance(t.get("text"), str):
            out.setdefault(t["id"], t["text"])
    return out


def _base(path) -> dict:
    from blackholes.io.paths import input_file
    from blackholes.io.untrusted import parse_json

    path = input_file(path, "generation config")
    doc = parse_json(path.read_bytes(), what=path.name)
    if not isinstance(doc, dict):
        raise BlackholesError(f"--base {path} is not a JSON object (a generation_config.json is)")
    return doc
