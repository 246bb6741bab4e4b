"""The report as one list of blocks (headings, paragraphs, tables, plots) and its Markdown form.

:mod:`pipeline.publish.sections` fills a :class:`Doc`; :func:`render_markdown`
and :func:`pipeline.publish.html.render_html` turn the same blocks into
``report.md`` and ``report.html``.
"""

from dataclasses import dataclass, field
from typing import Any, List, Sequence, Tuple

from pipeline.table import Cell, Table, cell_text

__all__ = ["Cell", "Doc", "Plot", "Table", "cell_text", "render_markdown"]


@dataclass
class Plot:
    """A rendered figure: ``plots/<name>.png`` in Markdown, embedded in HTML."""

    name: str
    title: str
    png: bytes
    caption: str


@dataclass
class Doc:
    """Blocks in reading order: ``(kind, body)`` with kind h1..h3, p, ul, table, plot, details."""

    blocks: List[Tuple[str, Any]] = field(default_factory=list)

    def h(self, level: int, text: str):
        self.blocks.append((f"h{level}", text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def ul(self, items: Sequence[str]):
        self.blocks.append(("ul", list(items)))

    def table(self, t: Table):
        self.blocks.append(("table", t))

    def plot(self, plot: Plot):
        self.blocks.append(("plot", plot))

    def details(self, summary: str, t: Table):
        self.blocks.append(("details", (summary, t)))


def _md_table(t: Table) -> List[str]:
    return t.markdown() + [""]


def render_markdown(doc: Doc) -> str:
    """``report.md``: plots are linked as ``plots/<name>.png``; cells marked "bad" are bold."""
    out: List[str] = []
    for kind, body in doc.blocks:
        if kind.startswith("h"):
            out += ["#" * int(kind[1:]) + " " + body, ""]
        elif kind == "p":
            out += [body, ""]
        elif kind == "ul":
            out += [f"- {item}" for item in body] + [""]
        elif kind == "table":
            out += _md_table(body)
        elif kind == "details":
            out += [f"{body[0]}:", ""] + _md_table(body[1])
        elif kind == "plot":
            out += [f"![{body.title}](plots/{body.name}.png)", "", f"*{body.caption}*", ""]
    return "\n".join(out).rstrip() + "\n"
