"""The dependency rule: `supervisor` imports `runtime`; `runtime` never imports `supervisor`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_importing_runtime_does_not_import_supervisor() -> None:
    code = (
        "import sys, runtime, runtime.wire\n"
        "bad = sorted(m for m in sys.modules if m == 'supervisor' or m.startswith('supervisor.'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _imported_modules(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.append(node.args[0].value)
    return names


def test_no_runtime_source_imports_supervisor() -> None:
    offenders = []
    sources = sorted((ROOT / "runtime").rglob("*.py"))
    assert sources, "runtime/ has no sources?"
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for module in _imported_modules(tree):
            if module == "supervisor" or module.startswith("supervisor."):
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []
