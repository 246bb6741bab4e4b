"""``report.html``: the report's blocks as one self-contained page.

Plots are embedded as base64 PNG and the style is inline, so the page opens
anywhere without other files (no links, no scripts).
"""

import base64
import html
import re

from pipeline.publish.document import Doc, Table, cell_text

_INLINE = [(re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
           (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
           (re.compile(r"(?<![\w*])\*([^*]+)\*(?![\w*])"), r"<em>\1</em>")]

CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Roboto,"DejaVu Sans",Helvetica,Arial,sans-serif;
 color:#1f2328;max-width:1180px;margin:24px auto;padding:0 20px;background:#fff}
h1{font-size:24px;border-bottom:2px solid #d0d7de;padding-bottom:6px}
h2{font-size:19px;border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:30px}
h3{font-size:16px;margin-top:20px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px}
th,td{border:1px solid #d0d7de;padding:4px 8px;vertical-align:top;white-space:nowrap}
td.wrap{white-space:normal}
th{background:#f6f8fa;font-weight:600}
tbody tr:nth-child(even){background:#fafbfc}
td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}
td.l,th.l{text-align:left}
td.ok{color:#116329;background:#dafbe1}
td.good{color:#116329}
td.bad{color:#82071e;background:#ffebe9;font-weight:600}
td.muted{color:#6e7781}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f6f8fa;padding:1px 4px;
 border-radius:4px}
figure{margin:12px 0 22px}
figure img{max-width:100%;border:1px solid #d0d7de}
figcaption{color:#57606a;font-size:13px;margin-top:4px}
details summary{cursor:pointer;margin:6px 0}
.banner{padding:8px 12px;border-radius:6px;margin:10px 0}
.banner.ok{background:#dafbe1;border:1px solid #4ac26b}
.banner.bad{background:#ffebe9;border:1px solid #ff8182}
"""


def _inline(text: str) -> str:
    """Escapes ``text`` and turns its inline Markdown (code, bold, italics) into HTML."""
    s = html.escape(text, quote=False)
    for pat, rep in _INLINE:
        s = pat.sub(rep, s)
    return s


def _html_table(t: Table) -> str:
    align = t.alignment
    head = "".join(f"<th class=\"{'r' if a == 'r' else 'l'}\">{_inline(h)}</th>" for h, a in zip(t.headers, align))
    rows = []
    for row in t.rows:
        cells = []
        for c, a in zip(row, align):
            cls = ("r" if a == "r" else "l") + (f" {c[1]}" if isinstance(c, tuple) else "")
            cells.append(f"<td class=\"{cls}\">{_inline(cell_text(c))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _paragraph(text: str) -> str:
    # The verdict paragraph ("**PASS..." / "**FAIL...") is shown as a coloured banner.
    if text.startswith("**PASS") or text.startswith("**FAIL"):
        cls = "ok" if text.startswith("**PASS") else "bad"
        return f"<p class=\"banner {cls}\">{_inline(text)}</p>"
    return f"<p>{_inline(text)}</p>"


def render_html(doc: Doc, title: str) -> str:
    """The whole page for ``doc``, titled ``title``."""
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"]
    for kind, body in doc.blocks:
        if kind.startswith("h"):
            parts.append(f"<{kind}>{_inline(body)}</{kind}>")
        elif kind == "p":
            parts.append(_paragraph(body))
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in body) + "</ul>")
        elif kind == "table":
            parts.append(_html_table(body))
        elif kind == "details":
            parts.append(f"<details><summary>{_inline(body[0])}</summary>{_html_table(body[1])}</details>")
        elif kind == "plot":
            b64 = base64.b64encode(body.png).decode("ascii")
            parts.append(f"<figure><img alt=\"{html.escape(body.title)}\" src=\"data:image/png;base64,{b64}\">"
                         f"<figcaption>{_inline(body.caption)}</figcaption></figure>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
