"""durable/ is a leaf: it imports nothing of the project (only the standard library and the
``cryptography`` package), so every layer may use it."""
from __future__ import annotations

import ast
from pathlib import Path

import durable

PROJECT = {"capabilities", "kernel_model", "roottasks", "tasks", "hil", "l4emu", "protocols", "durable"}


def test_durable_imports_nothing_of_the_project_but_itself() -> None:
    root = Path(durable.__file__).parent
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in PROJECT, f"{path.name} imports {name} (inside durable/, import relatively)"
