"""How a registry's credentials are given without `docker login`: the environment
variables, and the hint an error gives. Its own module so that client.py (which says
the hint) and credentials.py (which reads them) need not import each other."""

from __future__ import annotations

import os

TOKEN_ENV = "CCACHE_CLI_REGISTRY_TOKEN"
USERNAME_ENV = "CCACHE_CLI_REGISTRY_USERNAME"
PASSWORD_ENV = "CCACHE_CLI_REGISTRY_PASSWORD"


def has_environment_credentials() -> bool:
    return bool(os.environ.get(TOKEN_ENV) or os.environ.get(USERNAME_ENV))


def login_hint(host: str) -> str:
    return f"log in with `docker login {host}`, or set {TOKEN_ENV} or {USERNAME_ENV} and {PASSWORD_ENV}"
