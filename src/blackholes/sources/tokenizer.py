"""Token strings for row ids, with the ``tokenizers`` library (no transformers).

A row id the tokenizer has no token for (typically the padding rows that round
the vocabulary up to a multiple of 64 or 128) gets ``None``.

>>> strings, vocab_size, path = token_strings("model_dir/tokenizer.json", [0, 63])
>>> strings[0], strings[63], vocab_size
('!', None, 60)
"""

from __future__ import annotations

import os
from pathlib import Path

from blackholes.errors import BlackholesError


def find_tokenizer(path: str | os.PathLike) -> Path:
    """``tokenizer.json`` itself, or the one inside a folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise BlackholesError(f"no tokenizer.json at {path}")
    return path


def load_tokenizer(path: str | os.PathLike):
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json`` (or a folder holding it)."""
    from tokenizers import Tokenizer

    path = find_tokenizer(path)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exceptions for bad files
        raise BlackholesError(f"cannot read tokenizer {path}: {str(e).splitlines()[0] if str(e) else e}") from None


def readable(tokenizer, token_id: int) -> str | None:
    """What a token stands for: its decoded text, or its vocabulary piece when the
    text alone is not readable (a lone byte of a UTF-8 sequence, or nothing);
    ``None`` when the id has no token (a padding row).

    >>> tok = load_tokenizer("model_dir")
    >>> readable(tok, 1), readable(tok, 59), readable(tok, 63)
    ('the', '<|endoftext|>', None)
    """
    piece = tokenizer.id_to_token(token_id)
    if piece is None:
        return None
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    if not text or "\ufffd" in text:
        return piece
    return text


def token_strings(path: str | os.PathLike, ids) -> tuple[dict[int, str | None], int, Path]:
    """Readable strings for ``ids``, the tokenizer's vocabulary size, and its path."""
    path = find_tokenizer(path)
    tok = load_tokenizer(path)
    return {int(i): readable(tok, int(i)) for i in ids}, tok.get_vocab_size(with_added_tokens=True), path


def vocabulary_strings(vocab, ids) -> dict[int, str | None]:
    """Readable strings from a vocabulary stored in the model file (GGUF): the decoded text,
    else the raw piece; ``None`` beyond the vocabulary (padding rows).

    >>> from blackholes.sources.matrix import Vocabulary
    >>> vocabulary_strings(Vocabulary(["a", "<0xE0>"], ["a", None]), [0, 1, 5])
    {0: 'a', 1: '<0xE0>', 5: None}
    """
    out = {}
    for i in ids:
        i = int(i)
        out[i] = None if i >= vocab.size else (vocab.text[i] if vocab.text[i] else vocab.pieces[i])
    return out
