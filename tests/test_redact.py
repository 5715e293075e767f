"""Redaction of known secrets (imageready.redact): what the environment holds is read as it is now."""

from __future__ import annotations

import pytest

from imageready.redact import MASK, redact, redactor


def test_a_secret_set_in_the_environment_after_a_first_redaction_is_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert redact("nothing secret here") == "nothing secret here"
    monkeypatch.setenv("CONTOSO_API_TOKEN", "tok-first-5f2a9c")
    assert redact("token tok-first-5f2a9c sent") == f"token {MASK} sent"
    monkeypatch.setenv("CONTOSO_API_TOKEN", "tok-second-77b1e0")
    assert redact("token tok-second-77b1e0 sent") == f"token {MASK} sent"
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "client-secret-value-31d")
    mask = redactor()
    assert mask("a client-secret-value-31d b") == f"a {MASK} b"
    assert "tok-second-77b1e0" not in mask("tok-second-77b1e0")
