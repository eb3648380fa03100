"""The verification part of the report page, on a planted matrix with indicators (no model needed: the verdicts
are given), so the scatter plot and the disagreements are drawn from known numbers."""

from __future__ import annotations

import numpy as np

from blackholes.analysis.groups import scan
from blackholes.render.model_report import write_report
from blackholes.verify.result import TokenVerdict, Verification, THRESHOLDS


def test_the_page_answers_first_and_shows_table_scatter_and_disagreements(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 24)).astype(np.float32)
    x[10:16] = x[10]  # one hole of 6
    x[40:46] *= 0.01  # low-norm rows: the indicator's candidates
    result = scan(x, indicators=True)
    candidates = result.candidates
    assert candidates
    verified = [TokenVerdict(i, f"t{i}", 1e-5, "strong_verified", {"repeats": 1e-5}, {"repeats": True})
                for i in range(10, 16)]
    produced = TokenVerdict(candidates[0], "copied", 0.95, "strong_rejected", {"repeats": 0.95}, {"repeats": True})
    more = [TokenVerdict(i, f"c{i}", 0.004, "weak_verified", {"repeats": 0.004}, {"repeats": True})
            for i in candidates[1:3]]
    result.verification = Verification("magikarp", "m", "float32", dict(THRESHOLDS), {"id": 1, "text": "ebook"},
                                       2.0, sorted(verified + [produced] + more, key=lambda t: t.id))
    report = write_report(result, tmp_path / "report")
    page = report.markdown.read_text()
    answer = page.split("## Answer", 1)[1].split("\n## ", 1)[0]
    assert "**6 of 300 tokens are dead**" in answer
    assert "**2 more tokens are verified as under-trained**" in answer
    assert all(f"{i} `c{i}`" in answer for i in candidates[1:3])
    assert "Of the 6 hole members tested, 6 are never produced" in answer
    assert (tmp_path / "report" / "plots" / "verification.png").is_file()
    assert any(p.name == "verification.png" for p in report.plots)
    section = page.split("Where verification and the indicator disagree", 1)[1]
    assert "1 token flagged by the weights that the model still produces" in section and "`copied`" in section
