"""Why a case could not pass: the one vocabulary of error categories.

An exception that carries a ``category`` (Azure, guest, facts, an action step) is an expected
failure of the environment or of the VM's state, reported by its one line. The category decides
whether the failure is a finding on the VM or the infrastructure failing (exit code 12,
``exitcodes.for_category``), and it travels as its string: verdicts, the audit JSON, JUnit and
Allure's trace line carry ``str(category)``, so a member's value is a wire format and never
changes. ``docs/ci/exit-codes.md`` names every value in the row of its exit code
(``tests/reports/test_ci_docs.py`` keeps the two in sync).
"""

from __future__ import annotations

import enum
from typing import Self


class Category(enum.StrEnum):
    """An error category: its wire string, and whether it is the infrastructure failing (Azure,
    the guest's transport, a deadline) rather than a verdict on the VM."""

    _value_: str
    infrastructure: bool

    def __new__(cls, wire: str, infrastructure: bool) -> Self:
        member = str.__new__(cls, wire)
        member._value_ = wire
        member.infrastructure = infrastructure
        return member

    AZURE_API = "Azure API error", True
    AZURE_PERMISSION = "Azure permission", True
    AZURE_AUTHENTICATION = "Azure authentication", True
    AZURE_UNREACHABLE = "Azure unreachable", True
    GUEST_UNREACHABLE = "guest unreachable", True
    GUEST_AUTHENTICATION = "guest authentication", True
    GUEST_HOST_KEY = "guest host key", True
    #: the guest at the address is not (or cannot prove it is) the VM Azure describes
    GUEST_IDENTITY = "guest identity", True
    #: a fact a check needs is absent, null or of the wrong type
    GUEST_FACTS = "guest facts", True
    TIMEOUT = "timeout", True
    #: Azure shows no such VM (or resource group, subscription): a finding on the target
    NOT_FOUND = "not found", False
    #: the VM's own state keeps its facts out of reach (not running, no OS type reported)
    VM_STATE = "vm state", False
    #: the transport may not do this (e.g. feed stdin through Run Command)
    NOT_ALLOWED = "not allowed", False
    #: an action step could not reach its post-condition
    ACTION_FAILED = "action failed", False

    @classmethod
    def of(cls, text: object) -> Category | None:
        """The member whose wire string is ``text`` (None for "" or an unknown string)."""
        return next((member for member in cls if member.value == text), None)
