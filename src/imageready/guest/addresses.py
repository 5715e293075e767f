"""Where each VM's guest answers when its NIC's address is not the way in: ``--guest-address``
options and ``IMAGEREADY_GUEST_ADDRESSES`` (a tunnel, a jump host, azsim's relays)."""

from __future__ import annotations

import json
from pathlib import Path

from imageready.redact import redact, register_secret


class GuestConfigError(ValueError):
    """A --guest-address or IMAGEREADY_GUEST_ADDRESSES value that cannot be used; one line."""


def parse_guest_addresses(values: list[str], env_value: str | None) -> dict[str, str]:
    """``RG/NAME=HOST:PORT`` options, over ``IMAGEREADY_GUEST_ADDRESSES`` (a JSON object, inline
    or in a file), keyed by lower-cased ``rg/name``."""
    found: dict[str, str] = {}
    if env_value:
        text = env_value.strip()
        if not text.startswith("{"):
            try:
                text = Path(text).read_text(encoding="utf-8")
            except OSError as exc:
                raise GuestConfigError(f"IMAGEREADY_GUEST_ADDRESSES {env_value}: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise GuestConfigError(f"IMAGEREADY_GUEST_ADDRESSES {env_value}: not UTF-8 text") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GuestConfigError(f"IMAGEREADY_GUEST_ADDRESSES: not a JSON object ({exc.msg})") from None
        if not isinstance(data, dict):
            raise GuestConfigError("IMAGEREADY_GUEST_ADDRESSES: not a JSON object")
        found.update({str(k).lower(): str(v) for k, v in data.items()})
    for value in values:
        key, sep, address = value.partition("=")
        if not sep or "/" not in key or not address.strip():
            raise GuestConfigError(f"--guest-address {redact(value)!r}: expected RG/NAME=HOST[:PORT]")
        found[key.strip().lower()] = address.strip()
    for key, address in found.items():
        if "@" in address or any(c.isspace() for c in address.strip()):
            # a user:password@ here would travel to every message that names the address
            userinfo, _, host = address.rpartition("@")
            register_secret(userinfo)
            shown = f"***@{host}" if userinfo else redact(address)
            raise GuestConfigError(
                f"guest address of {key}: {shown!r} is not HOST[:PORT] (an address carries no "
                "user or credentials: they come from the environment, an agent or a key file)"
            )
    return found
