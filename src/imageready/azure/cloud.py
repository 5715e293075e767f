"""Which Azure: the cloud's endpoints (ARM, Entra ID, the token audience), from a name or a
custom ARM endpoint, and the CA bundle that trusts them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from imageready.azure_errors import AzureError

_HOST_NAME = re.compile(r"^[A-Za-z0-9.\-]+(:\d+)?$")


@dataclass(frozen=True)
class CloudSettings:
    """Where ARM and Entra ID are for one cloud, and the token audience ARM expects."""

    name: str
    arm_endpoint: str
    authority_host: str
    audience: str

    @property
    def scope(self) -> str:
        return self.audience.rstrip("/") + "/.default"

    @property
    def known_authority(self) -> bool:
        """True for Microsoft's own clouds, where MSAL's instance discovery is right."""
        return self.authority_host in {c.authority_host for c in CLOUDS.values()}


CLOUDS = {
    "public": CloudSettings(
        "public",
        "https://management.azure.com/",
        "https://login.microsoftonline.com",
        "https://management.azure.com/",
    ),
    "usgov": CloudSettings(
        "usgov",
        "https://management.usgovcloudapi.net/",
        "https://login.microsoftonline.us",
        "https://management.usgovcloudapi.net/",
    ),
    "china": CloudSettings(
        "china",
        "https://management.chinacloudapi.cn/",
        "https://login.chinacloudapi.cn",
        "https://management.chinacloudapi.cn/",
    ),
}
_ALIASES = {"azurecloud": "public", "azureusgovernment": "usgov", "azurechinacloud": "china"}
#: the classic ARM audience; Azure Stack and other custom clouds accept it
CUSTOM_AUDIENCE = "https://management.core.windows.net/"


def _https_url(value: str, source: str) -> str:
    text = value.strip()
    if "://" not in text and _HOST_NAME.match(text):
        text = "https://" + text
    parts = urlsplit(text)
    if parts.scheme != "https" or not parts.netloc:
        raise AzureError(f"{source} {value!r}: expected an https:// URL")
    return text


def resolve_cloud(name: str | None = None, arm_endpoint: str | None = None) -> CloudSettings:
    """The cloud from the option or ``IMAGEREADY_CLOUD`` (public|usgov|china|custom).

    A custom ARM endpoint comes from the option or ``IMAGEREADY_ARM_ENDPOINT`` (and selects
    ``custom`` when no cloud is named); the authority from ``AZURE_AUTHORITY_HOST``, else the
    cloud's own; a custom audience from ``IMAGEREADY_ARM_AUDIENCE``.
    """
    chosen = (name or os.environ.get("IMAGEREADY_CLOUD") or "").strip().lower()
    endpoint = arm_endpoint or os.environ.get("IMAGEREADY_ARM_ENDPOINT") or None
    chosen = _ALIASES.get(chosen, chosen) or ("custom" if endpoint else "public")
    if chosen not in (*CLOUDS, "custom"):
        raise AzureError(f"cloud {chosen!r}: expected one of public, usgov, china, custom")
    authority_env = os.environ.get("AZURE_AUTHORITY_HOST")
    if chosen == "custom":
        if not endpoint:
            raise AzureError("cloud 'custom' needs an ARM endpoint (option or IMAGEREADY_ARM_ENDPOINT)")
        arm = _https_url(endpoint, "ARM endpoint").rstrip("/") + "/"
        authority = _https_url(authority_env, "AZURE_AUTHORITY_HOST") if authority_env else None
        return CloudSettings(
            name="custom",
            arm_endpoint=arm,
            authority_host=(authority or CLOUDS["public"].authority_host).rstrip("/"),
            audience=os.environ.get("IMAGEREADY_ARM_AUDIENCE") or CUSTOM_AUDIENCE,
        )
    if arm_endpoint:
        raise AzureError(f"an ARM endpoint was given with cloud {chosen!r}; use cloud 'custom'")
    cloud = CLOUDS[chosen]
    if authority_env:
        authority = _https_url(authority_env, "AZURE_AUTHORITY_HOST").rstrip("/")
        cloud = CloudSettings(cloud.name, cloud.arm_endpoint, authority, cloud.audience)
    return cloud


def resolve_ca_bundle(option: str | None = None) -> str | None:
    """The CA bundle from the option or ``IMAGEREADY_CA_BUNDLE``; None for the system store."""
    value = option or os.environ.get("IMAGEREADY_CA_BUNDLE") or None
    if value is not None and not os.path.isfile(value):
        raise AzureError(f"CA bundle {value!r} does not exist")
    return value
