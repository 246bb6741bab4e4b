"""The report as one list of blocks (headings, paragraphs, tables, plots) and its Markdown form.

:mod:`pipeline.publish.sections` fills a :class:`Doc`; :func:`render_markdown`
and :func:`pipeline.publish.html.render_html` turn the same blocks into
``report.md`` and ``report.html``.
"""

from dataclasses import dataclass, field
from typing import Any, List, Sequence, Tuple, Union

Cell = Union[str, Tuple[str, str]]  # text, or (text, css class: "ok" | "bad" | "muted" | "good" | "wrap")


@dataclass
class Table:
    """A table: ``align`` has one char per column, "l" or "r"; default: first left, rest right."""

    headers: List[str]
    rows: List[List[Cell]]
    align: str = ""

    @property
    def alignment(self) -> str:
        return self.align or "l" + "r" * (len(self.headers) - 1)


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


def cell_text(c: Cell) -> str:
    """The text of a cell, without its style."""
    return c[0] if isinstance(c, tuple) else c


def _md_cell(c: Cell) -> str:
    text = cell_text(c).replace("|", "\\|")
    return f"**{text}**" if isinstance(c, tuple) and c[1] == "bad" and text else text


def _md_table(t: Table) -> List[str]:
    out = ["| " + " | ".join(t.headers) + " |",
           "|" + "|".join("---:" if a == "r" else "---" for a in t.alignment) + "|"]
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return out + [""]


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
