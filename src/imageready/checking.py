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
    Control and bidi characters are escaped; ``where``, ``fix`` and ``doc`` are one line each (a
    line break a guest-controlled name carries is escaped too); ``problem`` keeps its line breaks
    (it may list findings, each on its line, whose names are escaped at their source:
    ``Finding.summary``)."""
    where, fix, doc = (printable(redact(part)) for part in (where, fix, doc))  # one line each
    problem = printable(redact(problem), multiline=True)
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
    """The one-line summaries of what ``item`` saw, escaped: a check may stash a line quoting a
    guest-controlled name, and the audit takes it from here."""
    return [printable(text) for _, text in item.stash.get(EVIDENCE, [])]
