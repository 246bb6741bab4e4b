"""A table of text cells and its Markdown form: the one table renderer of the package.

Reports, gate summaries, model cards and benchmark printouts all build a
:class:`Table`; :meth:`Table.markdown` writes it as GitHub Markdown and
:func:`pipeline.publish.html.render_html` as HTML. It imports nothing of the
package, so every layer can use it.
"""

from dataclasses import dataclass
from typing import List, Tuple, Union

Cell = Union[str, Tuple[str, str]]  # text, or (text, css class: "ok" | "bad" | "muted" | "good" | "wrap")


def cell_text(c: Cell) -> str:
    """The text of a cell, without its style."""
    return c[0] if isinstance(c, tuple) else c


def _md_cell(c: Cell) -> str:
    text = cell_text(c).replace("|", "\\|")
    return f"**{text}**" if isinstance(c, tuple) and c[1] == "bad" and text else text


@dataclass
class Table:
    """A table: ``align`` has one char per column, "l" or "r"; default: first left, rest right.

    A row may be shorter than ``headers``: its last cells are left empty (a message that
    spans the rest of the row, e.g. why a variant does not load).
    """

    headers: List[str]
    rows: List[List[Cell]]
    align: str = ""

    @property
    def alignment(self) -> str:
        return self.align or "l" + "r" * (len(self.headers) - 1)

    def markdown(self) -> List[str]:
        """The Markdown lines: header, alignment row, one line per row ("|" in a cell escaped,
        cells styled "bad" in bold; the missing cells of a short row written ``| |``)."""
        out = ["| " + " | ".join(self.headers) + " |",
               "|" + "|".join("---:" if a == "r" else "---" for a in self.alignment) + "|"]
        return out + ["| " + " | ".join(_md_cell(c) for c in row) + " |" + " |" * (len(self.headers) - len(row))
                      for row in self.rows]
