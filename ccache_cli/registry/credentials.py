"""Answering a registry's 401, through the `oras` SDK.

oras keeps credentials the way the ecosystem does: Docker's config.json, its
credential helpers and credential store, and the token flow of registries that hand
out bearer tokens. Credentials from the environment come first:
CCACHE_CLI_REGISTRY_TOKEN (a bearer token), or CCACHE_CLI_REGISTRY_USERNAME and
CCACHE_CLI_REGISTRY_PASSWORD; then Docker's config.json: `$DOCKER_CONFIG`'s alone
where it is set, as Docker does, else ~/.docker's.

client.py imports this module only once a registry asks for credentials (or the
environment holds some): importing oras (and the jsonschema it brings) is a tenth of
a second that a pull from a registry open to it need not wait for.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import oras.container
import oras.provider
import requests

from ccache_cli.errors import BadInputError, RegistryError

from .login import PASSWORD_ENV, TOKEN_ENV, USERNAME_ENV, login_hint


class Credentials(oras.provider.Registry):
    """oras's registry client with its request wrapper replaced: one attempt, the
    caller retries; a 401 is answered with Basic credentials where the registry asks
    for them (htpasswd), else with a token from the challenge's realm and scope,
    asked for again when the token held lacks the scope (a push after a pull) or
    has expired. Requests go through the caller's session (its connection pool)."""

    def __init__(self, host: str, repository: str, scheme: str, session: requests.Session) -> None:
        super().__init__(hostname=host, insecure=scheme == "http", auth_backend="token")
        self._where = (host, repository)
        self.session = self.auth.session = session  # token requests too: one pool, no cookies
        self._scheme: str | None = None  # the challenge answered: Basic or Bearer
        self._auth_lock = threading.Lock()
        auth = self.auth
        docker_config = os.environ.get("DOCKER_CONFIG")
        if docker_config:  # oras would merge it with ~/.docker's; Docker reads it alone
            path = os.path.join(docker_config, "config.json")
            auth._auth_config = _docker_config(path) if os.path.isfile(path) else {"auths": {}}
        try:
            auth.load_configs(oras.container.Container(f"{host}/{repository}", registry=host))
        except (OSError, ValueError, KeyError, TypeError) as exc:  # a config.json or helper's answer that is not one
            raise BadInputError(f"cannot read Docker's credentials for {host}: {exc!r}") from exc
        if token := os.environ.get(TOKEN_ENV):
            auth.token = token
        elif (user := os.environ.get(USERNAME_ENV)) and (password := os.environ.get(PASSWORD_ENV)) is not None:
            auth.set_basic_auth(user, password)

    def authorization(self) -> dict[str, str]:
        """The Authorization header of the credentials held, if any."""
        if self._scheme == "Basic":
            return {"Authorization": f"Basic {self.auth._basic_auth}"}  # type: ignore[attr-defined]
        if getattr(self.auth, "token", None):
            return {"Authorization": f"Bearer {self.auth.token}"}  # type: ignore[attr-defined]
        return {}

    def answer(self, challenged: requests.Response, sent: dict[str, str]) -> dict[str, str] | None:
        """The headers to send again after a 401 to a request sent with `sent`; None
        where there is nothing better to send (the caller reports the 401). Raises
        RegistryError where the token service grants nothing."""
        challenge = challenged.headers.get("Www-Authenticate", "")
        sent_authorization = sent.get("Authorization")
        with self._auth_lock:
            if self.authorization().get("Authorization", sent_authorization) != sent_authorization:
                pass  # another thread got new credentials meanwhile: use them
            elif challenge.lower().startswith("basic"):
                if sent_authorization is not None or not getattr(self.auth, "_basic_auth", None):
                    return None  # wrong or no credentials
                self._scheme = "Basic"
            else:
                new_headers, changed = self.auth.authenticate_request(
                    challenged, dict(sent), refresh=sent_authorization is not None
                )
                if not changed or new_headers.get("Authorization") == sent_authorization:
                    host, repository = self._where
                    raise RegistryError(
                        f"{host} refused the credentials for {repository} (no token was granted): " + login_hint(host)
                    )
                self._scheme = "Bearer"
        return {**sent, **self.authorization()}


def _docker_config(path: str) -> dict[str, Any]:
    """One Docker config.json, in the shape oras keeps its merged configs."""
    try:
        with open(path) as handle:
            config = json.load(handle)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot read Docker's {path}: {exc}") from exc
    return {
        "auths": config.get("auths", {}),
        "credsStore": config.get("credsStore"),
        "credHelpers": config.get("credHelpers", {}),
    }
