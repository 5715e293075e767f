"""Resuming an interrupted run: the signed step tags the actions write on a VM."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: step tags the actions write on the VM: ``imageready-step-<step>`` = ``done run=R at=T``
#: (``started run=R at=T`` before an irreversible guest step)
STEP_TAG = "imageready-step-"


#: a step tag's signature field: `` sig=`` and 32 hex digits, always the tag's last word
_TAG_SIG = " sig="
_TAG_SIG_LEN = 32
TAG_MAX = 256  # Azure's limit for a tag value


def _tag_target(model: Mapping[str, Any]) -> str:
    """What a step tag is bound to: the VM's vmId and its OS disk (a swapped or restored OS disk
    keeps the VM's tags, not their meaning)."""
    props = model.get("properties") or {}
    os_disk = ((props.get("storageProfile") or {}).get("osDisk") or {}).get("managedDisk") or {}
    return f"{props.get('vmId', '')}\n{str(os_disk.get('id', '')).lower()}"


def sign_step_tag(body: str, name: str, model: Mapping[str, Any], key: bytes | None) -> str:
    """The value of step tag ``name``: ``body`` (cut to fit), signed with the pipeline's verdict
    key when there is one (HMAC over the VM's vmId, its OS disk, the step and the body)."""
    if key is None:
        return body[:TAG_MAX]
    body = body[: TAG_MAX - len(_TAG_SIG) - _TAG_SIG_LEN]
    return f"{body}{_TAG_SIG}{_tag_mac(body, name, model, key)}"


def _tag_mac(body: str, name: str, model: Mapping[str, Any], key: bytes) -> str:
    mac = hmac.new(key, f"{_tag_target(model)}\n{name}\n{body}".encode(), hashlib.sha256)
    return mac.hexdigest()[:_TAG_SIG_LEN]


def step_tag_problem(value: str, name: str, model: Mapping[str, Any], key: bytes | None) -> str | None:
    """Why step tag ``value`` cannot be trusted (None when it can). Without a key nothing can be
    checked (docs/threat-model.md); with one, the tag must carry this VM's and OS disk's
    signature: one written by hand, by a run without the key or before an OS disk swap has not."""
    if key is None:
        return None
    body, found, sig = value.rpartition(_TAG_SIG)
    if not found:
        return "it is not signed with this pipeline's verdict key"
    if not hmac.compare_digest(_tag_mac(body, name, model, key), sig.strip()):
        return "its signature does not match this VM, its OS disk and the tag's content"
    return None


def parse_step_tag(value: str | None) -> dict[str, str]:
    """``{"state": "done", "run": R, "at": T}`` from a step tag value ({} when absent)."""
    if not value:
        return {}
    state, _, rest = value.partition(" ")
    fields = dict(part.split("=", 1) for part in rest.split() if "=" in part)
    return {"state": state, **fields}


@dataclass(frozen=True)
class Resume:
    """A VM mid-way through an earlier run's actions (its guest step started or done)."""

    run_id: str
    tag: str
    accepted: bool
    reason: str
    #: the case set of the resumed run's verdict (what it judged green)
    expected: tuple[str, ...] = ()
