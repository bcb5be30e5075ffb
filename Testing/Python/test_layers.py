"""The house rules, read from the source: the layers never import the command line, and no function in the
pipeline, the training or the command line grows past 80 lines (issue 17)."""
import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[2] / "DareFuseSlicer" / "DareFuseSlicerLib"
MAX_FUNCTION_LINES = 80


def _modules():
    return sorted(LIB.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = ["DareFuseSlicerLib", *path.relative_to(LIB).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, package: str):
    """Every module the import statements of `source` name, relative imports resolved against `package`
    (`from . import x` counts as the module `package.x`, as it may be one)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _imports_cli(source: str, package: str) -> bool:
    return any(m == "DareFuseSlicerLib.cli" or m.startswith("DareFuseSlicerLib.cli.")
               for m in imported_modules(source, package))


def _package_of(path: Path) -> str:
    name = _module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def test_the_import_reader_finds_the_command_line_in_every_form():
    """The check below can fail: each way a layer module could import cli is found, and a look-alike is not."""
    for form in ("from ..cli import main", "from .. import cli", "import DareFuseSlicerLib.cli.segment",
                 "from DareFuseSlicerLib.cli.segment import summary", "from ..cli.training import register"):
        assert _imports_cli(form, "DareFuseSlicerLib.pipeline"), form
    assert _imports_cli("from .cli import main", "DareFuseSlicerLib")
    assert not _imports_cli("from .clinical import x\nfrom . import command", "DareFuseSlicerLib.pipeline")


def test_no_layer_imports_the_command_line():
    offenders = []
    for path in _modules():
        if path.relative_to(LIB).parts[0] == "cli":
            continue
        if _imports_cli(path.read_text(encoding="utf-8"), _package_of(path)):
            offenders.append(str(path.relative_to(LIB)))
    assert not offenders, offenders


@pytest.mark.parametrize("folder", ["pipeline", "training", "cli"])
def test_no_function_is_longer_than_80_lines(folder):
    too_long = []
    for path in sorted((LIB / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(LIB)}:{node.lineno} {node.name} ({lines} lines)")
    assert not too_long, too_long
