"""A harness bug on purpose: loaded with ``-p tests.reliability.crash_plugin``, it raises inside a
pytest hook once the action case named by ``IR_TEST_CRASH_AFTER`` reported, so the run ends in an
INTERNALERROR after an irreversible step, as a bug in a report hook would make it."""

from __future__ import annotations

import os

import pytest


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    after = os.environ.get("IR_TEST_CRASH_AFTER")
    if after and report.when == "teardown" and after in report.nodeid:
        raise RuntimeError("simulated harness crash in a report hook")
