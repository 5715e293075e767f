"""docs/azsim-rules.md and the tests stay in sync: every rule has a Microsoft source and an existing
test, and every test of test_arm_rules.py and test_arm_throttling.py backs a rule (a rule azsim
enforces without a row, or a row whose test is gone, fails here)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RULEBOOK = REPO / "docs" / "azsim-rules.md"
RULE_ROW = re.compile(r"^\| ([A-Z]+-\d+) \|")
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
SHORT_SOURCES = ("[errors]", "[generalize]", "[managed image]", "[galleries]", "[spec", "[throttling]")


def rules() -> dict[str, list[str]]:
    """Rule id -> the cells of its row (rule, answer, sources, tests)."""
    found: dict[str, list[str]] = {}
    for line in RULEBOOK.read_text(encoding="utf-8").splitlines():
        match = RULE_ROW.match(line)
        if match:
            cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
            assert match.group(1) not in found, f"rule {match.group(1)} twice"
            found[match.group(1)] = cells[1:]
    return found


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


def test_every_rule_has_a_source_and_an_existing_test() -> None:
    table = rules()
    assert len(table) >= 25, "the rulebook lost its rules"
    for rule, (_what, _answer, sources, tests) in table.items():
        assert "https://" in sources or any(s in sources for s in SHORT_SOURCES), f"{rule}: no source"
        refs = TEST_REF.findall(tests)
        assert refs, f"{rule}: no test"
        for module, name in refs:
            assert name in defined_tests(REPO / module), f"{rule}: {module}::{name} does not exist"


def test_every_rule_test_backs_a_rule() -> None:
    cited = {name for row in rules().values() for _, name in TEST_REF.findall(row[-1])}
    unlisted = set()
    for module in ("test_arm_rules.py", "test_arm_throttling.py"):
        unlisted |= defined_tests(REPO / "tests" / "azsim" / module) - cited
    assert not unlisted, f"tests of azsim's rules that docs/azsim-rules.md does not list: {sorted(unlisted)}"
