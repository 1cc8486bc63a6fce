"""setup.py's runtime dependencies are exactly what the package imports (test-only tools go to the test extra)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMPORT_NAMES = {"pyyaml": "yaml"}  # distribution name -> module name, where they differ
# Imported only where a user asks for them, with an error that says what to install
OPTIONAL = {"zstandard": "hfssl/data/text/readers.py"}


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


def test_every_third_party_import_is_a_runtime_dependency():
    """The other direction: a module the package imports that only comes in through another package's
    dependencies breaks when that package drops it."""
    import sys

    requires, _ = _setup_lists()
    declared = {IMPORT_NAMES.get(n, n.replace("-", "_")) for n in
                (re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].lower() for r in requires)}
    third_party = _imported_modules() - set(sys.stdlib_module_names) - {"hfssl", "__future__"}
    assert third_party - declared == set(OPTIONAL), f"imported but not in install_requires: {sorted(third_party - declared)}"
    for module, path in OPTIONAL.items():  # each optional import is guarded by an error that names the package
        text = (ROOT / path).read_text()
        assert f"import {module}" in text and f"pip install {module}" in text
