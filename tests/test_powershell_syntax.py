"""Every PowerShell the harness ships parses: each ``*.ps1`` under src/imageready and every
module-level string constant named ``*_PS1`` in its Python (e.g. the WinRM bootstrap).

Parsed with the tree-sitter PowerShell grammar; any ERROR or MISSING node fails the test with
the file and line. The grammar is stricter than PowerShell in a few places (it rejects bare-word
arrays such as ``-Property name, detail``): quote such words.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_powershell

SOURCE = Path(__file__).resolve().parents[1] / "src" / "imageready"
_PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


def syntax_errors(source: str) -> list[str]:
    """``line N: <text>`` for each node the grammar could not parse."""
    data = source.encode("utf-8")
    found: list[str] = []
    stack = [_PARSER.parse(data).root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            snippet = data[node.start_byte : node.end_byte].decode("utf-8", "replace").splitlines()
            found.append(f"line {node.start_point[0] + 1}: {(snippet[0] if snippet else node.type)[:80]!r}")
        stack.extend(node.children)
    return sorted(found, key=lambda item: int(item.split()[1].rstrip(":")))


def _python_constants() -> list[tuple[str, str]]:
    constants = []
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            for target in targets:
                if isinstance(target, ast.Name) and target.id.endswith("_PS1") and node.value is not None:
                    value = ast.literal_eval(node.value)
                    constants.append((f"{path.relative_to(SOURCE.parent)}:{target.id}", value))
    return constants


SCRIPTS = sorted(SOURCE.rglob("*.ps1"))
CONSTANTS = _python_constants()


def test_the_harness_ships_powershell() -> None:
    names = {p.name for p in SCRIPTS}
    assert {"windows.ps1", "sysprep_generalize.ps1"} <= names
    assert any(name.endswith(":BOOTSTRAP_PS1") for name, _ in CONSTANTS)


@pytest.mark.parametrize("path", SCRIPTS, ids=[str(p.relative_to(SOURCE)) for p in SCRIPTS])
def test_script_parses(path: Path) -> None:
    errors = syntax_errors(path.read_text(encoding="utf-8"))
    assert not errors, f"{path.relative_to(SOURCE.parent)}: " + "; ".join(errors)


@pytest.mark.parametrize(("name", "source"), CONSTANTS, ids=[name for name, _ in CONSTANTS])
def test_python_built_powershell_parses(name: str, source: str) -> None:
    errors = syntax_errors(source)
    assert not errors, f"{name}: " + "; ".join(errors)


def test_the_checker_finds_and_locates_errors() -> None:
    broken = "$ok = 1\n\nif ($x { }\n"
    errors = syntax_errors(broken)
    assert errors and errors[0].startswith("line 3:")
    assert syntax_errors("$ok = @{ a = 1 }\n") == []


def test_the_composed_windows_facts_script_parses() -> None:
    """facts/windows.py puts the identity probe's function into windows.ps1: the whole parses."""
    from imageready.facts import windows

    assert "function Get-ImagereadyIdentity" in windows.SCRIPT
    assert syntax_errors(windows.SCRIPT) == []
