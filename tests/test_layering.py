"""The package's layers: the core knows nothing of the CLI or the TUI, the TUI does not reach into
the CLI, and the core imports on a machine without Textual (or timm)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "freezetui"


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names |= {f"{mod}.{a.name}" for a in node.names}
    return names


def _violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        for name in imported_modules(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                out.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    return out


def test_core_imports_neither_textual_nor_the_cli_nor_the_tui():
    assert _violations("core", ("textual", "textual_plotext", "freezetui.cli", "freezetui.tui")) == []


def test_tui_does_not_import_the_cli():
    assert _violations("tui", ("freezetui.cli",)) == []


def test_the_checker_sees_relative_imports(tmp_path):
    # the scan itself must be able to fail: a relative import of the CLI from the TUI is caught
    path = PACKAGE / "tui" / "widgets" / "totals.py"
    names = imported_modules(path)
    assert "freezetui.tui.format.human" in names or "freezetui.tui.format" in names


@pytest.mark.parametrize("blocked", [["textual"], ["textual", "timm"]])
def test_core_imports_without_textual(blocked):
    code = (
        "import sys, pkgutil, importlib\n"
        + "".join(f"sys.modules[{b!r}] = None\n" for b in blocked)
        + "import freezetui.core as c\n"
        "for m in pkgutil.iter_modules(c.__path__):\n"
        "    importlib.import_module('freezetui.core.' + m.name)\n"
        "import freezetui, freezetui.options\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
