"""setup.py's runtime dependencies are exactly what the package imports (test-only tools go to the test extra)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMPORT_NAMES = {"pyyaml": "yaml"}  # distribution name -> module name, where they differ


def _setup_lists() -> tuple[list[str], dict[str, list[str]]]:
    call = next(n for n in ast.walk(ast.parse((ROOT / "setup.py").read_text())) if isinstance(n, ast.Call)
                and getattr(n.func, "id", "") == "setup")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
    return kw["install_requires"], kw["extras_require"]


def _imported_modules() -> set[str]:
    found = set()
    for path in (ROOT / "hfssl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_every_runtime_dependency_is_imported_by_the_package():
    requires, extras = _setup_lists()
    imported = _imported_modules()
    for requirement in requires:
        name = re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower()
        module = IMPORT_NAMES.get(name, name.replace("-", "_"))
        assert module in imported, f"{name} is a runtime dependency but hfssl never imports {module}: move it to an extra"
    assert any(r.startswith("jiwer") for r in extras["test"])  # the WER/CER reference of the metric tests
