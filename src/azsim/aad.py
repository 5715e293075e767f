"""The Entra ID side: OpenID configuration and the client-credentials token endpoint.

Enough for MSAL (and so ``ClientSecretCredential``, ``EnvironmentCredential`` and ``az login
--service-principal``) to do the real flow. Tokens are JWTs signed with a per-process HMAC key, so
ARM can tell its own tokens from anything else, and carry the claims the harness reads for its
audit record (``oid``, ``tid``, ``appid``, ``sub``, ``iat``, ``exp``). Errors use Entra ID's
shape and AADSTS codes.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from azsim.scenario import Principal


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class AadReply:
    status: int
    body: dict[str, Any]


class TokenError(Exception):
    """A token ARM cannot accept; ``code`` is ARM's error code."""

    def __init__(self, code: str, message: str, *, cae: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: the token was issued to a client that handles CAE claims challenges
        self.cae = cae


class Directory:
    """One tenant with one service principal, as the scenario describes it."""

    def __init__(
        self,
        tenant: str,
        principal: Principal,
        client_secret: str,
        signing_key: bytes,
        token_lifetime: int,
    ) -> None:
        self.tenant = tenant
        self.principal = principal
        self._secret = client_secret
        self._key = signing_key
        self.token_lifetime = token_lifetime

    # -- endpoints ----------------------------------------------------------------------------

    def openid_configuration(self, base_url: str, tenant: str) -> AadReply:
        if tenant.lower() not in (self.tenant, "organizations", "common"):
            return self._error(
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{tenant}' not found. Check "
                "to make sure you have the correct tenant ID and are signing into "
                "the correct cloud.",
            )
        root = f"{base_url}/{self.tenant}"
        return AadReply(
            200,
            {
                "token_endpoint": f"{root}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{base_url}/{self.tenant}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{root}/v2.0",
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": f"{base_url}/oidc/userinfo",
                "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "oid", "tid"],
                "tenant_region_scope": "WW",
                "cloud_instance_name": "azsim.local",
                "cloud_graph_host_name": "graph.azsim.local",
                "msgraph_host": "graph.azsim.local",
            },
        )

    def token(self, tenant: str, form_body: bytes) -> AadReply:
        """``POST /{tenant}/oauth2/v2.0/token`` (client credentials only)."""
        form = {k: v[0] for k, v in parse_qs(form_body.decode("utf-8", "replace")).items()}
        if tenant.lower() != self.tenant:
            return self._error(
                400,
                "invalid_request",
                90002,
                f"Tenant '{tenant}' not found. "
                "Check to make sure you have the correct tenant ID and are signing "
                "into the correct cloud.",
            )
        if form.get("grant_type") != "client_credentials":
            return self._error(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{form.get('grant_type', '')}'.",
            )
        client_id = form.get("client_id", "")
        if client_id.lower() != self.principal.client_id:
            return self._error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier "
                f"'{client_id}' was not found in the directory '{self.tenant}'. This "
                "can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the "
                "tenant. You may have sent your authentication request to the "
                "wrong tenant.",
            )
        secret = form.get("client_secret")
        if secret is None:
            return self._error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the "
                "following parameter: 'client_assertion' or 'client_secret'.",
            )
        if not hmac.compare_digest(secret.encode(), self._secret.encode()):
            return self._error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. "
                "Ensure the secret being sent in the request is the client secret "
                "value, not the client secret ID, for a secret added to app "
                f"'{client_id}'.",
            )
        scope = form.get("scope", "")
        audience = scope.split(" ")[0].removesuffix(".default").rstrip("/") + "/"
        claims_request = form.get("claims", "")
        cae = '"CP1"' in claims_request
        lifetime = self.token_lifetime
        return AadReply(
            200,
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": self.issue(audience, lifetime, cae=cae),
            },
        )

    def _error(self, status: int, error: str, code: int, text: str) -> AadReply:
        trace = str(uuid.uuid4())
        correlation = str(uuid.uuid4())
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        return AadReply(
            status,
            {
                "error": error,
                # Entra ID puts the trace lines after CRLFs, which clients must not print as-is
                "error_description": f"AADSTS{code}: {text}\r\nTrace ID: {trace}\r\n"
                f"Correlation ID: {correlation}\r\nTimestamp: {stamp}",
                "error_codes": [code],
                "timestamp": stamp,
                "trace_id": trace,
                "correlation_id": correlation,
            },
        )

    # -- tokens --------------------------------------------------------------------------------

    def issue(self, audience: str, lifetime: int, *, cae: bool = False) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{self.tenant}/",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "aio": _b64(uuid.uuid4().bytes),
            "app_displayname": self.principal.display_name,
            "appid": self.principal.client_id,
            "appidacr": "1",
            "idp": f"https://sts.windows.net/{self.tenant}/",
            "idtyp": "app",
            "oid": self.principal.object_id,
            "sub": self.principal.object_id,
            "tid": self.tenant,
            "uti": _b64(uuid.uuid4().bytes),
            "ver": "1.0",
        }
        if cae:
            claims["xms_cc"] = ["CP1"]
        header = {"typ": "JWT", "alg": "HS256", "kid": "azsim"}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = hmac.new(self._key, signing_input.encode("ascii"), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(signature)}"

    def verify(self, authorization: str | None, expired_before: float | None) -> dict[str, Any]:
        """The claims of a valid bearer token; raises TokenError with ARM's code otherwise.

        ``expired_before``: tokens issued before this moment are treated as expired (the
        token_expiry fault).
        """
        if not authorization:
            raise TokenError(
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise TokenError(
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is provided in an invalid format.",
            )
        parts = token.strip().split(".")
        try:
            if len(parts) != 3:
                raise ValueError("not a JWT")
            expected = hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256).digest()
            if not hmac.compare_digest(expected, _unb64(parts[2])):
                raise ValueError("bad signature")
            claims: dict[str, Any] = json.loads(_unb64(parts[1]))
        except (ValueError, UnicodeError):
            raise TokenError("InvalidAuthenticationToken", "The access token is invalid.") from None
        if claims.get("tid") != self.tenant:
            raise TokenError(
                "InvalidAuthenticationTokenTenant",
                "The access token is from the "
                f"wrong issuer '{claims.get('iss')}'. It must match the tenant "
                f"'https://sts.windows.net/{self.tenant}/' associated with this "
                "subscription.",
            )
        now = time.time()
        expiry = float(claims.get("exp", 0))
        # iat has whole seconds: a token issued in the cutoff's own second counts as fresh, so a
        # client that fetches a new token right after the cutoff is not refused again
        if expired_before is not None and int(claims.get("iat", 0)) < int(expired_before):
            expiry = min(expiry, expired_before)
        if now >= expiry:
            stamp = datetime.datetime.fromtimestamp(expiry, datetime.UTC).strftime("%m/%d/%Y %H:%M:%S")
            current = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%m/%d/%Y %H:%M:%S")
            raise TokenError(
                "ExpiredAuthenticationToken",
                f"The access token expiry UTC time '{stamp}' is earlier than current UTC time '{current}'.",
                cae="CP1" in claims.get("xms_cc", []),
            )
        return claims
