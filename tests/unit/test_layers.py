"""How the code is put together: the floors (checked by `lint-imports` in `make test`) and no
module reaching for another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["foundation", "schemas", "ledger", "storage", "messaging", "processor",
            "projections", "commands", "wallet", "tests", "benchmarks"]  # fmt: skip


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            found += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{a.name}"
                      for a in node.names if a.name.startswith("_")]  # fmt: skip
    return found


class TestPrivateNames:
    def test_no_module_imports_another_modules_private_name(self) -> None:
        """A name starting with `_` is used only in the module that defines it."""
        found = [hit for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
                 for hit in _private_imports(path)]  # fmt: skip
        assert found == []
