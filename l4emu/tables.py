"""Tables for people and for pipes: rich tables on a terminal, plain aligned lines otherwise.

Plain lines are never wrapped or cut, whatever their length (CI logs, ``| grep``, files): each
column is as wide as its widest cell. Cells are rich markup (as for ``rich.table.Table``);
plain output drops the styles. Large tables are printed plain on a terminal too: rich lays
every cell out, which costs seconds for thousands of rows.
"""
from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

RICH_MAX_ROWS = 400


def plain_cell(markup: str) -> str:
    return Text.from_markup(markup).plain if "[" in markup else markup


def plain_lines(columns: Sequence[str], rows: Sequence[Sequence[str]],
                right: Sequence[str] = ()) -> list[str]:
    """Aligned text lines: a header, a rule, one line per row (multi-line cells joined with ' / ')."""
    cells = [[plain_cell(c).replace("\n", " / ") for c in row] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        out = [v.rjust(w) if col in right else v.ljust(w) for v, w, col in zip(values, widths, columns, strict=False)]
        return "  ".join(out).rstrip()

    return [line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells]


def emit_table(console: Console, columns: Sequence[str], rows: Sequence[Sequence[str]], *,
               title: str | None = None, right: Sequence[str] = (), plain: bool | None = None) -> None:
    """Print a table: rich on a terminal (small tables), plain aligned lines otherwise."""
    if plain is None:
        plain = not console.is_terminal or len(rows) > RICH_MAX_ROWS
    if plain:
        if title:
            console.out(title, highlight=False)
        console.out("\n".join(plain_lines(columns, rows, right)), highlight=False)  # one write, not one per row
        return
    table = Table(title=title, title_justify="left", show_edge=False)
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left")
    for row in rows:
        table.add_row(*row)
    console.print(table)
