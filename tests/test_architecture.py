"""The architecture contract: the layering of ``sovereign`` and the size of its parts.

The import contracts live in ``pyproject.toml`` (``[tool.importlinter]``) and run with
``lint-imports`` in ``scripts/test``; these tests show that they hold, and that they catch a
violation (a checker that cannot fail proves nothing).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# Functions over 80 lines and files over 600 lines that predate the limit, with their size
# when it was set. Each may shrink (then lower its figure or drop it); none may grow, and
# nothing may join the list. The emulators (sovereign/testing) speak whole protocols and
# are exempt.
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 600
LONG_FILES: dict[str, int] = {}
LONG_FUNCTIONS: dict[str, int] = {
    "sovereign/brokers/sim_chunk.py:speculate": 162,
    "sovereign/core/chunk_walk.py:_walk": 114,
    "sovereign/core/chunk_walk.py:_walk_scalar": 91,
    "sovereign/core/chunks.py:_book": 187,
}


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first: the copy under test, not the installed package, is analysed.
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy_project(dest: Path) -> Path:
    shutil.copytree(ROOT / "sovereign", dest / "sovereign", ignore=shutil.ignore_patterns("*.pt"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_the_import_contracts_hold() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("core/fills.py", "from sovereign.brokers.sim import SimBroker", "the core is pure"),
        ("core/regime.py", "import ray", "the core is pure"),
        ("core/risk.py", "from pathlib import Path", "the core is pure"),
        ("core/metrics.py", "import sovereign.config", "the core is pure"),
        ("messages/market.py", "import sovereign.core.signals", "the messages"),
        ("domain/regimes.py", "import sovereign.messages", "the domain is the bottom layer"),
        ("core/trades.py", "import sovereign.core.signals", "no import cycles"),
        ("brokers/sim_chunk.py", "import sovereign.brokers.sim", "no import cycles"),
    ],
)
def test_a_forbidden_import_breaks_the_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    root = _copy_project(tmp_path)
    path = root / "sovereign" / module
    path.write_text(path.read_text() + f"\n{line}  # a deliberate violation\n")
    result = _lint_imports(root)
    assert result.returncode != 0, result.stdout
    broken = next(ln for ln in result.stdout.splitlines() if ln.startswith(contract))
    assert broken.rstrip().endswith("BROKEN") or "BROKEN" in result.stdout
    # The report names the offending module (a cycle: by its name within its package).
    assert module.removesuffix(".py").split("/")[-1] in result.stdout


def _python_files() -> list[Path]:
    return [
        p
        for p in sorted((ROOT / "sovereign").rglob("*.py"))
        if "testing" not in p.relative_to(ROOT).parts
    ]


def test_the_core_opens_no_file() -> None:
    """Import contracts cannot see the ``open`` builtin: the core calls it nowhere."""
    offenders = []
    for path in sorted((ROOT / "sovereign" / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "open"
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_no_file_or_function_grows_past_its_limit() -> None:
    too_long_files: dict[str, int] = {}
    too_long_functions: dict[str, int] = {}
    for path in _python_files():
        rel = path.relative_to(ROOT).as_posix()
        source = path.read_text()
        lines = source.count("\n")
        if lines > MAX_FILE_LINES:
            too_long_files[rel] = lines
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long_functions[f"{rel}:{node.name}"] = length
    grown_files = {
        k: (v, LONG_FILES.get(k)) for k, v in too_long_files.items() if v > LONG_FILES.get(k, 0)
    }
    grown_functions = {
        k: (v, LONG_FUNCTIONS.get(k))
        for k, v in too_long_functions.items()
        if v > LONG_FUNCTIONS.get(k, 0)
    }
    # The allowances follow every shrink down: one left above its part's size would let
    # it grow back unnoticed.
    stale = {
        k: (too_long_files.get(k), v) for k, v in LONG_FILES.items() if too_long_files.get(k, 0) < v
    } | {
        k: (too_long_functions.get(k), v)
        for k, v in LONG_FUNCTIONS.items()
        if too_long_functions.get(k, 0) < v
    }
    assert stale == {}, f"allowances above their part's size (now, allowed): {stale}"
    assert grown_files == {}, f"files over {MAX_FILE_LINES} lines (now, allowed): {grown_files}"
    assert grown_functions == {}, (
        f"functions over {MAX_FUNCTION_LINES} lines (now, allowed): {grown_functions}"
    )
