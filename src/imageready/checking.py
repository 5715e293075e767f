"""What check modules use to report: a finding that says what is wrong, where, how to fix it and
which document it enforces; and evidence that goes, redacted, to Allure and the audit."""

from __future__ import annotations

import json
from typing import Any, NoReturn

import pytest

from imageready.redact import redact
from imageready.text import printable

EVIDENCE = pytest.StashKey[list[tuple[str, str]]]()


def finding(problem: str, *, where: str, fix: str, doc: str) -> NoReturn:
    """Fail the current check. The first line (``problem``) is what the gate and the audit show.
    Each part is one line: a guest-controlled name with a line break in it is escaped, never
    allowed to cut the problem short or to forge a line of its own."""
    problem, where, fix, doc = (printable(redact(part)) for part in (problem, where, fix, doc))
    pytest.fail(f"{problem}\n  where: {where}\n  fix:   {fix}\n  doc:   {doc}", pytrace=False)


def evidence(request: pytest.FixtureRequest, summary: str, data: Any = None) -> None:
    """Record what a check saw: a one-line ``summary`` for the audit and, when given, ``data``
    (JSON-able) as an Allure attachment. Both are redacted; the summary is escaped to one line
    (the data stays exact: JSON escapes what it must)."""
    text = printable(redact(summary))
    request.node.stash.setdefault(EVIDENCE, []).append(("summary", text))
    try:
        import allure

        body = text if data is None else json.dumps(data, indent=2, sort_keys=True, default=str)
        allure.attach(
            redact(body),
            name=f"evidence: {text[:80]}",
            attachment_type=allure.attachment_type.TEXT if data is None else allure.attachment_type.JSON,
        )
    except ImportError:  # pragma: no cover - allure-pytest is a dependency
        pass


def evidence_summaries(item: pytest.Item) -> list[str]:
    return [text for _, text in item.stash.get(EVIDENCE, [])]
