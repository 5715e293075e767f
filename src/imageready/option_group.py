"""imageready's command-line options and ini key, declared in one group, every option with its
help (``pytest --help`` shows them). ``imageready.options`` reads them once, at configure time."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageready import guest as transports


def add_options(parser: pytest.Parser) -> None:
    """imageready's one option group (every option with its help) and its ini key."""
    group = parser.getgroup("imageready", "imageready: generalize Azure VMs safely")
    group.addoption(
        "--vm",
        action="append",
        default=[],
        metavar="RG/NAME",
        help="VM to check and act on: RG/NAME or a full virtualMachines resource id. Repeatable.",
    )
    group.addoption(
        "--subscription",
        metavar="ID",
        help="subscription of RG/NAME targets (default: $AZURE_SUBSCRIPTION_ID).",
    )
    group.addoption(
        "--apply",
        action="store_true",
        default=False,
        help="let actions change the VM. Without it, actions only report their plan.",
    )
    group.addoption(
        "--copy-first",
        action="store_true",
        default=False,
        help="for a VM whose only blocker is that it is an original (IR-SRC-001): check it, then "
        "copy it (snapshots, disks, a VM <name><suffix> tagged imageready-copy-of) and check and "
        "act on the copy; the original stays untouched. Without --apply, only the plan.",
    )
    group.addoption(
        "--copy-suffix",
        default="-imgcopy",
        metavar="SUFFIX",
        help="name of a --copy-first copy: the original's name plus this (default -imgcopy).",
    )
    group.addoption(
        "--verdict",
        action="append",
        default=[],
        metavar="FILE",
        type=Path,
        help="verdict file (or directory of them) from an earlier checks stage that may open "
        "the gate for actions. Repeatable.",
    )
    group.addoption(
        "--verdict-max-age",
        default="24h",
        metavar="AGE",
        help="refuse --verdict files older than this (e.g. 24h, 90m; default 24h).",
    )
    group.addoption(
        "--accept-unsigned-verdicts",
        action="store_true",
        default=False,
        help="trust --verdict files that carry no signature (a pipeline without a verdict key; "
        "docs/gate.md). Without it, a verdict must be signed with $IMAGEREADY_VERDICT_KEY; a "
        "signature that does not match is refused either way.",
    )
    group.addoption(
        "--waivers",
        metavar="FILE",
        type=Path,
        help="YAML or TOML file of waivers (check, parameter, reason, approver, expires).",
    )
    group.addoption(
        "--change-ticket",
        metavar="ID",
        help="change ticket recorded in the verdict, the audit and the Allure environment.",
    )
    group.addoption(
        "--report-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="where verdicts, the audit report and Allure results go (default: reports/out).",
    )
    group.addoption(
        "--cloud",
        choices=("public", "usgov", "china", "custom"),
        default=None,
        help="Azure cloud (default: $IMAGEREADY_CLOUD, else public; custom needs --arm-endpoint).",
    )
    group.addoption(
        "--arm-endpoint",
        metavar="URL",
        help="Resource Manager endpoint of a custom cloud (default: $IMAGEREADY_ARM_ENDPOINT).",
    )
    group.addoption(
        "--ca-bundle",
        metavar="PEM",
        help="CA bundle that signs ARM's and the guests' TLS certificates (default: "
        "$IMAGEREADY_CA_BUNDLE, else the system store).",
    )
    group.addoption(
        "--lro-deadline",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="deadline for each long-running Azure operation (default 1800).",
    )
    group.addoption(
        "--max-parallel",
        type=int,
        default=16,
        metavar="N",
        help="VMs whose facts are gathered at once (default 16: within Azure Resource Manager's "
        "read limits; requests are also paced by the x-ms-ratelimit-remaining headers).",
    )
    group.addoption(
        "--transport",
        choices=transports.choices(),
        default=transports.AUTO,
        help="how to reach the guest: auto (ssh for Linux, WinRM for Windows, Azure Run Command "
        "for read-only facts when there is no network path), or one of them.",
    )
    group.addoption(
        "--guest-address",
        action="append",
        default=[],
        metavar="RG/NAME=HOST:PORT",
        help="guest address instead of the NIC's private IP (also $IMAGEREADY_GUEST_ADDRESSES, "
        "a JSON object or file). Repeatable.",
    )
    group.addoption(
        "--guest-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="deadline for each script run on a guest (default 300).",
    )
    group.addoption(
        "--ssh-strict-host-keys",
        action="store_true",
        default=False,
        help="refuse SSH host keys not in $IMAGEREADY_KNOWN_HOSTS (default: record them in the audit).",
    )
    group.addoption(
        "--winrm-auth",
        choices=("ntlm", "kerberos", "basic", "credssp"),
        default="ntlm",
        help="WinRM authentication (default ntlm; kerberos: see docs/guests.md).",
    )
    group.addoption(
        # not --capture: pytest owns that option (output capturing)
        "--capture-as",
        metavar="image:NAME|gallery:G/D/V",
        help="after generalizing, capture a managed image (image:NAME) or an Azure Compute Gallery "
        "image version (gallery:GALLERY/DEFINITION/VERSION).",
    )
    group.addoption(
        "--lease-ttl",
        default="30m",
        metavar="AGE",
        help="how long the VM's lease lasts without renewal (default 30m; renewed at every step).",
    )
    group.addoption(
        "--break-lease",
        action="store_true",
        default=False,
        help="take a live lease held by another run (only once you know that run is dead).",
    )
    group.addoption(
        "--sysprep-args",
        default="/generalize /oobe /shutdown",
        metavar="ARGS",
        help="sysprep.exe arguments (default: /generalize /oobe /shutdown); /generalize and /oobe "
        "are required, and exactly one of /shutdown and /quit; /mode:vm only if every VM made from "
        "the image has the same hardware profile; /unattend is refused (Azure does not support "
        "custom answer files); /quiet is always added.",
    )
    group.addoption(
        "--sysprep-deadline",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long sysprep may take before the step fails (default 3600).",
    )
    group.addoption(
        "--scan-rules",
        type=Path,
        metavar="FILE",
        help="extra sensitive-data rules (YAML, docs/scan-rules.md) on top of the built-in ones.",
    )
    group.addoption(
        "--scan-deadline",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="deadline of one sensitive-data scan of a guest (default 900).",
    )
    parser.addini(
        "imageready_checks_dir",
        "directory (relative to rootdir) holding the policy: every check module in it must "
        "run for a VM's gate to open (default: checks). Setting it marks the rootdir as an "
        "imageready policy directory: imageready is active even without --vm",
        default="",
    )
