"""What the `maas-client` command prints: aligned tables for people, the gateway's JSON for
programs (`--json`)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

Cell = object


def _text(cell: Cell) -> str:
    if cell is None:
        return "-"
    if isinstance(cell, bool):
        return "yes" if cell else "no"
    if isinstance(cell, list | tuple):
        return ",".join(str(c) for c in cell) or "-"
    return str(cell)


def _numeric(cell: Cell) -> bool:
    return isinstance(cell, int | float | Decimal) and not isinstance(cell, bool)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Cell]], out: TextIO) -> None:
    """Columns as wide as their widest cell, numbers right-aligned, a missing value as `-`; the
    header in upper case. An empty list prints the header alone."""
    body = [list(row) for row in rows]
    texts = [[_text(cell) for cell in row] for row in body]
    widths = [len(h) for h in headers]
    for row in texts:
        widths = [max(w, len(t)) for w, t in zip(widths, row, strict=True)]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), file=out)
    for cells, row in zip(body, texts, strict=True):
        padded = (
            t.rjust(w) if _numeric(c) else t.ljust(w) for c, t, w in zip(cells, row, widths, strict=True)
        )
        print("  ".join(padded).rstrip(), file=out)


def print_fields(fields: Sequence[tuple[str, Cell]], out: TextIO) -> None:
    """One `name: value` line per field, names aligned (for a single object)."""
    width = max((len(name) for name, _ in fields), default=0)
    for name, value in fields:
        print(f"{name + ':':<{width + 1}} {_text(value)}", file=out)


def print_json(value: Any, out: TextIO) -> None:
    """The gateway's JSON, indented."""
    print(json.dumps(value, indent=2), file=out)


def write_output(text: str, path: str | None, what: str, out: TextIO) -> None:
    """`text` into the file at `path` (saying it wrote `what` there), or onto `out` when None."""
    if path:
        Path(path).write_text(text, encoding="utf-8")
        print(f"wrote {what} to {path}", file=out)
    else:
        out.write(text)
