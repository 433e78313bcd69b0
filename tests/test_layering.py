"""The package's layers: the core knows nothing of the CLI or the TUI, the TUI does not reach into
the CLI, and the core imports on a machine without Textual (or timm)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "freezetui"


def imported_modules(path: Path, package_root: Path = PACKAGE) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(package_root.parent).with_suffix("").parts[:-1])
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


def _violations(folder: str, forbidden: tuple[str, ...], package_root: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted((package_root / folder).rglob("*.py")):
        for name in imported_modules(path, package_root):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                out.append(f"{path.relative_to(package_root.parent)} imports {name}")
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


@pytest.mark.parametrize("line", ["from ..tui.app import FreezeApp", "from ...freezetui.cli import main",
                                  "import textual.widgets", "from textual import on", "from .. import cli",
                                  "import freezetui.tui.format as f"])
def test_the_check_fails_on_a_core_module_that_reaches_up(tmp_path, line):
    """Fed a copy of the package whose core reaches into the TUI, the CLI or Textual, the check
    reports it: a layering test that could never fail would prove nothing."""
    package = tmp_path / "freezetui"
    (package / "core").mkdir(parents=True)
    (package / "core" / "leaky.py").write_text(f"{line}\n")
    found = _violations("core", ("textual", "textual_plotext", "freezetui.cli", "freezetui.tui"), package)
    assert found and "core/leaky.py" in found[0], found


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
