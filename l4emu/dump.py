"""``l4emu boot --dump-caps``: every task's capabilities and mapped memory, as tables."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from l4emu.tables import emit_table


def render_dump(dump: dict[str, list[dict]], console: Console) -> None:
    """Per task: its capabilities (selector, object, type, rights, label, derived from), then the memory
    mapped into it (address, object, rights, size, offset) in a table of its own."""
    for task, rows in dump.items():
        caps = [(f"{row['selector']:#x}", escape(row["object"]), row["type"], row["rights"],
                 "" if row["label"] is None else f"{row['label']:#x}", escape(row["derived_from"] or ""))
                for row in rows if row["type"] != "memory"]
        emit_table(console, ("selector", "object", "type", "rights", "label", "derived from"), caps,
                   title=f"capabilities of {task}")
        memory = [(f"{row['address']:#x}", escape(row["object"]), row["rights"], str(row["size"]),
                   f"{row['offset']:#x}") for row in rows if row["type"] == "memory"]
        if memory:
            emit_table(console, ("address", "object", "rights", "size (bytes)", "offset"), memory,
                       title=f"memory mapped into {task}", right=("size (bytes)",))
