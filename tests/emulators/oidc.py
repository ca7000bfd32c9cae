"""An OpenID Connect provider on loopback: discovery, authorize, token, userinfo and JWKS.

It speaks the authorization-code flow as OpenID Connect Core 1.0 and RFC 6749 define it, which is
what Streamlit's ``st.login`` (Authlib) drives: the browser is redirected to ``/authorize``, which
here signs in ``next_user`` at once (no login form: the test chooses who signs in) and redirects
back with a one-time code; the app's server then swaps the code for an ID token (RS256, signed
with a key published at ``/jwks``) at ``/token``, authenticating with the client secret.

Refused as a real provider refuses them, with RFC 6749 error bodies: an unknown client, a
redirect URI other than the registered one, a wrong client secret, a code used twice or unknown.
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlencode

from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.emulators import Emulator, Reply, Request

CLIENT_ID = "darkroom-test-client"
CLIENT_SECRET = "emulator-client-secret-not-real"


class OIDCEmulator(Emulator):
    def __init__(self, redirect_uri: str = "") -> None:
        super().__init__()
        self.redirect_uri = redirect_uri  # the one registered for CLIENT_ID ("" = any, until set)
        self.next_user: dict[str, str] = {"sub": "u-ana", "email": "ana@studio.example", "name": "Ana"}
        self.key = RSAKey.generate_key(2048, parameters={"kid": "emulator-1"})
        self.codes: dict[str, dict[str, Any]] = {}  # code -> the grant it stands for (used once)
        self.tokens: dict[str, dict[str, str]] = {}  # access token -> user
        self.sign_ins: list[str] = []  # e-mail of each completed sign-in (token issued)

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "userinfo_endpoint": f"{self.url}/userinfo",
            "jwks_uri": f"{self.url}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "claims_supported": ["sub", "email", "name"],
        }

    def handle(self, req: Request) -> Reply:
        if req.path == "/.well-known/openid-configuration":
            return Reply.json(self.metadata())
        if req.path == "/jwks":
            return Reply.json({"keys": [self.key.as_dict(private=False)]})
        if req.path == "/authorize":
            return self._authorize(req)
        if req.path == "/token" and req.method == "POST":
            return self._token(req)
        if req.path == "/userinfo":
            user = self.tokens.get(req.headers.get("authorization", "").removeprefix("Bearer "))
            return Reply.json(user) if user else Reply.json({"error": "invalid_token"}, 401)
        return Reply.json({"error": "not_found"}, 404)

    def _authorize(self, req: Request) -> Reply:
        q = {k: v[0] for k, v in req.query.items()}
        if q.get("client_id") != CLIENT_ID:
            return Reply.json({"error": "unauthorized_client", "error_description": "unknown client_id"}, 400)
        if self.redirect_uri and q.get("redirect_uri") != self.redirect_uri:
            return Reply.json({"error": "invalid_request", "error_description": "redirect_uri is not registered"}, 400)
        if q.get("response_type") != "code" or "openid" not in q.get("scope", "").split():
            return Reply.json({"error": "invalid_request", "error_description": "response_type=code and scope openid expected"}, 400)
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"user": dict(self.next_user), "nonce": q.get("nonce"), "redirect_uri": q.get("redirect_uri")}
        query = urlencode({"code": code, "state": q.get("state", "")})
        return Reply(302, b"", {"Location": f"{q['redirect_uri']}?{query}"})

    def _client_ok(self, req: Request, form: dict[str, str]) -> bool:
        basic = req.headers.get("authorization", "")
        if basic.startswith("Basic "):
            client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        return client_id == CLIENT_ID and secret == CLIENT_SECRET

    def _token(self, req: Request) -> Reply:
        form = {k: v[0] for k, v in parse_qs(req.body.decode()).items()}
        if not self._client_ok(req, form):
            return Reply.json({"error": "invalid_client"}, 401)
        grant = self.codes.pop(form.get("code", ""), None)
        if form.get("grant_type") != "authorization_code" or grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
            return Reply.json({"error": "invalid_grant"}, 400)
        user, now = grant["user"], int(time.time())
        claims = {"iss": self.url, "sub": user["sub"], "aud": CLIENT_ID, "iat": now, "exp": now + 600, **user}
        if grant["nonce"]:
            claims["nonce"] = grant["nonce"]
        id_token = jwt.encode({"alg": "RS256", "kid": "emulator-1"}, claims, self.key)
        access = secrets.token_urlsafe(16)
        self.tokens[access] = user
        self.sign_ins.append(user["email"])
        return Reply.json({"access_token": access, "token_type": "Bearer", "expires_in": 600, "id_token": id_token,
                           "scope": "openid email profile"})
