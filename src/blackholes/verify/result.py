"""What verification found: one verdict per token, and the ``verification`` JSON section other tools read.

>>> v = Verification("magikarp", "m", "float32", dict(THRESHOLDS), {"id": 7, "text": "hello"}, 1.0,
...                  [TokenVerdict(3, "x", 0.0002, "strong_verified", {"repeats": 0.0002}, {"repeats": True})])
>>> v.counts()["verified"], sorted(v.to_json())
(1, ['complete', 'counts', 'device', 'dtype', 'method', 'model', 'placeholder', 'seconds', 'thresholds', 'tokens'])
"""

from __future__ import annotations

from dataclasses import dataclass, field

from blackholes.verify.engine import THRESHOLDS

VERDICTS = ("strong_verified", "weak_verified", "weak_rejected", "strong_rejected")


@dataclass
class TokenVerdict:
    """One token: the highest probability over the prompts (``max_prob``), its verdict, the probability per
    prompt (``None`` for a prompt skipped because the token was already strongly rejected), and per prompt whether
    the substituted prompt still re-encodes to contain the token."""

    id: int
    text: str | None
    max_prob: float
    verdict: str
    probs: dict
    encodable: dict

    def to_json(self) -> dict:
        return {"id": self.id, "text": self.text, "max_prob": self.max_prob, "verdict": self.verdict,
                "probs": dict(self.probs), "encodable": dict(self.encodable)}

    @classmethod
    def from_json(cls, row: dict) -> "TokenVerdict":
        return cls(int(row["id"]), row.get("text"), float(row["max_prob"]), str(row["verdict"]),
                   dict(row.get("probs") or {}), dict(row.get("encodable") or {}))

    @property
    def verified(self) -> bool:
        """"Verified" as magikarp's summaries count it: highest probability below 0.01."""
        return self.max_prob < THRESHOLDS["verified"]


@dataclass
class Verification:
    """The verdicts of one model (``tokens`` sorted by id); ``to_json()`` is the ``verification`` section."""

    method: str
    model: str
    dtype: str
    thresholds: dict
    placeholder: dict
    seconds: float
    tokens: list[TokenVerdict] = field(default_factory=list)
    device: str = "cpu"
    complete: bool = True

    def counts(self) -> dict:
        out = {v: 0 for v in VERDICTS}
        for t in self.tokens:
            out[t.verdict] = out.get(t.verdict, 0) + 1
        out["verified"] = sum(t.verified for t in self.tokens)
        out["tested"] = len(self.tokens)
        return out

    def verified_ids(self) -> list[int]:
        return [t.id for t in self.tokens if t.verified]

    def to_json(self) -> dict:
        return {
            "method": self.method, "model": self.model, "dtype": self.dtype, "device": self.device,
            "thresholds": dict(self.thresholds), "placeholder": dict(self.placeholder),
            "seconds": round(self.seconds, 3), "complete": self.complete, "counts": self.counts(),
            "tokens": [t.to_json() for t in self.tokens],
        }

    def summary(self, top: int = 20) -> str:
        """A few lines for the terminal: the counts, then the verified tokens."""
        c = self.counts()
        lines = [f"Verified ({self.method}, {self.dtype} on {self.device}): {c['verified']:,} of {c['tested']:,} "
                 f"tokens below {THRESHOLDS['verified']} ({c['strong_verified']:,} strong, {c['weak_verified']:,} "
                 f"weak); rejected {c['strong_rejected'] + c['weak_rejected']:,} ({c['strong_rejected']:,} strong) "
                 f"in {self.seconds:.1f} s" + ("" if self.complete else "  [incomplete]")]
        verified = sorted((t for t in self.tokens if t.verified), key=lambda t: t.max_prob)
        for t in verified[:top]:
            lines.append(f"  {t.id:>8}  {t.max_prob:.2e}  {t.verdict:<16} {t.text!r}")
        if len(verified) > top:
            lines.append(f"  ... {len(verified) - top:,} more")
        return "\n".join(lines)


def mask_tensors(v: Verification, rows: int) -> dict:
    """Per-row tensors for a mask file: ``verified`` (bool [V], True where the token's highest probability is
    below 0.01) and ``verified_max_prob`` (float32 [V], NaN for tokens not tested).

    >>> t = mask_tensors(Verification("magikarp", "m", "float32", {}, {}, 0.0, [TokenVerdict(1, "a", 0.5,
    ...                  "weak_rejected", {}, {})]), 3)
    >>> t["verified"].tolist(), t["verified_max_prob"].tolist()[1]
    ([False, False, False], 0.5)
    """
    import numpy as np

    verified = np.zeros(rows, bool)
    prob = np.full(rows, np.nan, np.float32)
    for t in v.tokens:
        if 0 <= t.id < rows:
            verified[t.id] = t.verified
            prob[t.id] = t.max_prob
    return {"verified": verified, "verified_max_prob": prob}
