"""docs/checks.md, the catalogue a change board reads, says what the checks' markers say: every
check in checks/ has a row and a section with its id, title, severity, OS, cases, test and the
document it enforces, and the catalogue lists no check that does not exist. (No simulator here:
the markers are read from the check modules themselves.)"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CATALOGUE = REPO / "docs" / "checks.md"


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    severity: str
    os: str
    cases: str
    test: str = ""
    doc: str = ""


#: how the Cases cell names a check's ``requires=`` (imageready.applicability)
REQUIRES_TEXT = {
    "capture": ", with `--capture-as`",
    "capture:image": ", with `--capture-as image:`",
    "capture:gallery": ", with `--capture-as gallery:`",
}


def cases_text(each: str | None, requires: str | None = None) -> str:
    base = f"one per VM and `{each}`" if each else "one per VM"
    return base + REQUIRES_TEXT[requires] if requires else base


def policy_checks() -> dict[str, Entry]:
    """Every ``@pytest.mark.check`` in checks/, by id."""
    found: dict[str, Entry] = {}
    for path in sorted((REPO / "checks").glob("test_*.py")):
        module = importlib.import_module(f"checks.{path.stem}")
        for name, function in vars(module).items():
            for mark in getattr(function, "pytestmark", []):
                if mark.name != "check" or not name.startswith("test_"):
                    continue
                k = mark.kwargs
                assert k["id"] not in found, f"two checks share the id {k['id']}"
                found[k["id"]] = Entry(
                    k["id"],
                    k["title"],
                    k["severity"],
                    k["os"],
                    cases_text(k.get("each"), k.get("requires")),
                    f"checks/{path.name}::{name}",
                    k["doc"],
                )
    return found


def table_rows(text: str) -> list[Entry]:
    rows = []
    for line in text.splitlines():
        if line.startswith("| IR-"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            assert len(cells) == 5, line
            rows.append(Entry(*cells))
    return rows


SECTION = re.compile(
    r"^### (?P<id>IR-\S+) (?P<title>.+)\n\n"
    r"- \*\*Severity:\*\* (?P<severity>\S+) · \*\*OS:\*\* (?P<os>\S+) · \*\*Cases:\*\* (?P<cases>.+)\n"
    r"- \*\*Test:\*\* `(?P<test>[^`]+)`\n"
    r"- \*\*Enforces:\*\* <(?P<doc>[^>]+)>\n"
    r"(?P<body>(?:.*\n)*?)(?=### |## |\Z)",
    re.MULTILINE,
)


def sections(text: str) -> list[tuple[Entry, str]]:
    found = []
    for match in SECTION.finditer(text):
        fields = {k: v for k, v in match.groupdict().items() if k != "body"}
        found.append((Entry(**fields), match.group("body")))
    return found


def test_every_check_has_a_row_and_a_section_that_match_its_marker() -> None:
    checks = policy_checks()
    assert len(checks) >= 32
    text = CATALOGUE.read_text(encoding="utf-8")
    rows = table_rows(text)
    documented = sections(text)
    assert text.count("\n### IR-") == len(documented), "a section's header lines do not parse"
    # the table lists each check once, as its marker says (the test and doc are in the sections)
    assert [row.id for row in rows] == [entry.id for entry, _ in documented], "table and sections differ"
    assert sorted(row.id for row in rows) == sorted(checks), "the catalogue and checks/ list other checks"
    for row in rows:
        marker = checks[row.id]
        assert row == Entry(marker.id, marker.title, marker.severity, marker.os, marker.cases), row.id
    for entry, body in documented:
        assert entry == checks[entry.id], entry.id
        assert "**Fails when**" in body and "**Fix:**" in body, f"{entry.id}: say what fails it and the fix"


def test_the_parser_sees_a_drifted_entry() -> None:
    """The sync test above fails when the catalogue drifts (here: a changed severity)."""
    text = CATALOGUE.read_text(encoding="utf-8")
    entry, _ = sections(text)[0]
    drifted = text.replace(f"**Severity:** {entry.severity} ·", "**Severity:** low ·", 1)
    assert sections(drifted)[0][0] != policy_checks()[entry.id]
