"""Sensitive-data scan: rules as data, one read-only pass on the guest, redacted on the guest.

The engine loads rules (``policy/scan_rules.yaml`` plus a user's ``--scan-rules FILE``), builds
the guest program (Linux: ``scripts/scan_linux.py`` on stdin with a POSIX ``sh`` fallback;
Windows: ``scripts/scan_windows.ps1``), runs it through a :class:`~imageready.guest.base.Guest`,
and turns its JSON into :class:`Finding` objects that say whether the chosen action removes them.

A finding never holds a secret: the guest sends rule, path, line, length, at most the first four
characters (none for values under 12) and a keyed HMAC fingerprint. The key (see
:func:`fingerprint_key`) travels inside the program on stdin and is never written to any output.

Nothing is skipped in silence: the guest reports the mount points it left out and why
(:class:`Excluded`: file systems off the image, the resource disk proven by its device) and every
path it could not read in full and why (:class:`NotScanned`); :meth:`ScanResult.coverage` turns
the latter into an incomplete scan unless a waiver names each path.

The package, by concern: ``rules`` (the rule files: reading, validating, choosing),
``patterns`` (rules as the guest matches them), ``key`` (the fingerprint key), ``remote`` (the
guest programs and running them), ``findings`` (what came back, and what waivers cover). Its
names below are the ones the plugin, the checks and the actions use; the guest programs'
builders and parsers are imported from their modules.
"""

from __future__ import annotations

from imageready.scan.findings import SCAN_CHECK_ID, DeprovisionContext, Finding, ScanResult
from imageready.scan.key import KEY_ENV, ScanKeyError, fingerprint_key
from imageready.scan.remote import scan_guest
from imageready.scan.rules import Rule, ScanRulesError, approved_disables, load_rules, rules_for

__all__ = [
    "KEY_ENV",
    "SCAN_CHECK_ID",
    "DeprovisionContext",
    "Finding",
    "Rule",
    "ScanKeyError",
    "ScanResult",
    "ScanRulesError",
    "approved_disables",
    "fingerprint_key",
    "load_rules",
    "rules_for",
    "scan_guest",
]
