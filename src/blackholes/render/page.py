"""A report page as a list of blocks, rendered both as Markdown and as one self-contained HTML page.

Pages (reproduce's report, a model's report, the census summary) are built with
:class:`Document`; images are embedded in the HTML as data URIs, so the file stands alone.

>>> doc = Document("A title", Path("."))
>>> doc.heading("Answer"); doc.para("**13** holes"); doc.table(["hole", "tokens"], [[0, 200]])
>>> print(doc.markdown())
# A title
<BLANKLINE>
## Answer
<BLANKLINE>
**13** holes
<BLANKLINE>
| hole | tokens |
| --- | --- |
| 0 | 200 |
<BLANKLINE>
>>> "<strong>13</strong>" in doc.html()
True
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path


class Document:
    """Blocks (headings, paragraphs, bullets, tables, images, code) in reading order."""

    def __init__(self, title: str, base: Path):
        self.title, self.base, self.blocks = title, Path(base), []

    def heading(self, text: str, level: int = 2):
        self.blocks.append(("h", level, text))

    def para(self, text: str):
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]):
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list]):
        self.blocks.append(("table", header, [[str(c) for c in r] for r in rows]))

    def image(self, path: Path, caption: str):
        self.blocks.append(("img", Path(path), caption))

    def code(self, text: str):
        self.blocks.append(("code", text))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for block in self.blocks:
            out += _MARKDOWN[block[0]](self, *block[1:])
        return "\n".join(out)

    def html(self) -> str:
        body = [f"<h1>{inline(self.title)}</h1>"] + [_HTML[b[0]](self, *b[1:]) for b in self.blocks]
        return PAGE.format(title=html.escape(self.title), body="\n".join(body))

    def relative(self, path: Path) -> str:
        return path.relative_to(self.base).as_posix()


def _md_table(doc, header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows] + [""]


_MARKDOWN = {
    "h": lambda doc, level, text: ["#" * level + " " + text, ""],
    "p": lambda doc, text: [text, ""],
    "ul": lambda doc, items: [f"- {item}" for item in items] + [""],
    "table": _md_table,
    "img": lambda doc, path, caption: [f"![{caption}]({doc.relative(path)})", "", f"*{caption}*", ""],
    "code": lambda doc, text: ["```", text, "```", ""],
}


def _html_table(doc, header, rows) -> str:
    head = "".join(f"<th>{inline(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_image(doc, path, caption) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    rel = html.escape(doc.relative(path))
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f'<figcaption>{inline(caption)} <a class="file" href="{rel}">full size: {rel}</a></figcaption></figure>')


_HTML = {
    "h": lambda doc, level, text: f"<h{level}>{inline(text)}</h{level}>",
    "p": lambda doc, text: f"<p>{inline(text)}</p>",
    "ul": lambda doc, items: "<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>",
    "table": _html_table,
    "img": _html_image,
    "code": lambda doc, text: f"<pre><code>{html.escape(text)}</code></pre>",
}


def inline(text: str) -> str:
    """Escape, then render the two Markdown marks the pages use: **bold** and `code`.

    >>> inline("**1** < `x`")
    '<strong>1</strong> &lt; <code>x</code>'
    """
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; line-height: 1.5; color: #222; }}
h1 {{ font-size: 1.7em; border-bottom: 2px solid #333; padding-bottom: .2em; }}
h2 {{ font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }}
table {{ border-collapse: collapse; margin: .8em 0; font-size: .92em; }}
th, td {{ border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }}
th {{ background: #f2f2f2; }}
code, pre {{ font-family: Menlo, Consolas, monospace; font-size: .9em; background: #f6f6f6; }}
pre {{ padding: .6em; overflow-x: auto; }}
figure {{ margin: 1em 0; }}
figure img {{ max-width: 100%; border: 1px solid #ddd; }}
figcaption {{ font-size: .9em; color: #555; }}
.file {{ color: #999; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""
