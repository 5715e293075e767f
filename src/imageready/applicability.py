"""Whether a check applies to a run: imageready decides "not applicable", never the check.

Two reasons exist, both decided here from what the check declares in its marker:

- ``os="Linux"`` or ``"Windows"``: the VM runs the other OS (decided per VM from Azure's OS type,
  in ``imageready.gatekeeper``);
- ``requires="capture"`` (or ``"capture:image"``, ``"capture:gallery"``): the check judges the
  ``--capture-as`` target, and this run captures nothing (or the other kind of artifact).

A check's own ``pytest.skip`` is neither: the gate counts it as a blocker (docs/gate.md).
"""

from __future__ import annotations

#: the values ``@pytest.mark.check(requires=...)`` accepts -> the artifact kind it needs (None: any)
REQUIREMENTS: dict[str, str | None] = {
    "capture": None,
    "capture:image": "image",
    "capture:gallery": "gallery",
}


def unmet_requirement(requires: str | None, capture: tuple[str, ...] | None) -> str | None:
    """Why a check that ``requires`` something does not apply to a run capturing ``capture``
    (the parsed ``--capture-as``), or None when it applies. An unknown requirement is a
    ValueError (the plugin reports it as a usage error)."""
    if not requires:
        return None
    if requires not in REQUIREMENTS:
        known = ", ".join(repr(r) for r in REQUIREMENTS)
        raise ValueError(f"requires={requires!r} is not one of {known}")
    kind = REQUIREMENTS[requires]
    if capture is None:
        return "this run captures nothing (no --capture-as)"
    if kind is not None and capture[0] != kind:
        return f"it judges a capture to {_ARTIFACT[kind]}, this run captures to {_ARTIFACT[capture[0]]}"
    return None


_ARTIFACT = {"image": "a managed image", "gallery": "a gallery"}
