"""One repository of an OCI registry.

Requests go through `requests`, with ccache's own retries: oras's request wrapper
retries every failure five times, sleeping up to 81 s (an unreachable registry took
two minutes to report); this one retries what a retry can mend (a dropped connection,
a 5xx, a 429) three times within seconds, then fails with one line. Uploads stream
from files, downloads resume where they were cut (HTTP Range), and nothing read from
the registry is held beyond a bound. Credentials are the `oras` SDK's
(credentials.py), loaded when a registry first answers 401, or at once where the
environment holds some.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.cookiejar
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import requests
import urllib3

from ccache_cli.errors import ArchiveError, BadInputError, RegistryError

from . import reference as references
from .layout import MANIFEST_TYPE
from .login import has_environment_credentials, login_hint

if TYPE_CHECKING:
    from .credentials import Credentials

TIMEOUT_ENV = "CCACHE_CLI_REGISTRY_TIMEOUT"  # seconds to connect, to get a response's headers, between reads
MIN_RATE_ENV = "CCACHE_CLI_REGISTRY_MIN_RATE"  # bytes/s below which a response's body is given up
_RETRY_DELAYS_S = (0.2, 1.0, 3.0)
_RETRIED_STATUS = {429, 500, 502, 503, 504}
_CONNECTIONS = 16
_CHUNK = 1 << 20


class Remote:
    """A repository and tag (or digest) of a registry, ready to be read and written."""

    def __init__(self, reference: str, insecure: bool = False) -> None:
        self.ref = references.parse(reference)
        self.reference = reference
        self.host = self.ref.host
        # Plain HTTP only where asked, or to this machine (a registry on loopback, as in
        # tests and sidecars, is seldom given a certificate).
        self.scheme = "http" if insecure or _is_loopback(self.host) else "https"
        self._session = requests.Session()
        # No cookies, as oras's session: some registries (Harbor) refuse an upload that
        # carries the CSRF cookie their reads handed out.
        self._session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        adapter = requests.adapters.HTTPAdapter(pool_connections=_CONNECTIONS, pool_maxsize=_CONNECTIONS)
        self._session.mount(f"{self.scheme}://", adapter)
        self._credentials: Credentials | None = None
        self._credentials_lock = threading.Lock()
        if has_environment_credentials():
            self._load_credentials()
        self._base = f"{self.scheme}://{self.host}/v2/{self.ref.repository}"

    # -- manifests -----------------------------------------------------------

    def manifest(self, limit: int) -> bytes:
        """The artifact's manifest, as stored (its bytes are what its digest covers),
        read up to `limit` bytes; checked against the reference's digest if it has one.
        A connection reset or stalled while the body arrives is tried again."""
        url = f"{self._base}/manifests/{self.ref.version}"
        for attempt in range(len(_RETRY_DELAYS_S) + 1):
            with self._request("GET", url, headers={"Accept": MANIFEST_TYPE}, stream=True) as response:
                if response.status_code == 404:
                    raise BadInputError(
                        f"{self.reference} not found: the registry has no such repository, tag or digest"
                    )
                self._check(response, "read the manifest of")
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise ArchiveError(f"{self.reference}: its manifest is larger than any ccache writes")
                try:
                    with _deadline(response, int(declared) if declared.isdigit() else limit, self.host):
                        data = response.raw.read(limit + 1, decode_content=True)
                    break
                except (requests.RequestException, OSError, urllib3.exceptions.HTTPError) as exc:
                    if attempt == len(_RETRY_DELAYS_S):
                        raise RegistryError(
                            f"lost the connection to {self.host} while reading the manifest: {_reason(exc)}"
                        ) from exc
            time.sleep(_RETRY_DELAYS_S[attempt])
        if len(data) > limit:
            raise ArchiveError(f"{self.reference}: its manifest is larger than any ccache writes")
        if self.ref.digest and "sha256:" + hashlib.sha256(data).hexdigest() != self.ref.digest:
            raise ArchiveError(f"{self.reference}: the registry's manifest does not match the digest asked for")
        return data

    def put_manifest(self, data: bytes) -> str:
        """Store the manifest under the tag; its digest."""
        url = f"{self._base}/manifests/{self.ref.version}"
        response = self._request("PUT", url, data=data, headers={"Content-Type": MANIFEST_TYPE})
        self._check(response, "write the manifest of")
        return "sha256:" + hashlib.sha256(data).hexdigest()

    # -- blobs ---------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        response = self._request("HEAD", f"{self._base}/blobs/{digest}")
        response.close()
        if response.status_code == 404:
            return False
        self._check(response, "look up a blob of")
        return True

    def put_blob(self, digest: str, size: int, data: bytes | IO[bytes]) -> None:
        """Upload a blob in one request (bytes, or a file streamed from where it is)."""
        response = self._request("POST", f"{self._base}/blobs/uploads/", headers={"Content-Length": "0"})
        self._check(response, "start an upload to")
        location = response.headers.get("Location", "")
        if location.startswith("/"):
            location = f"{self.scheme}://{self.host}{location}"
        separator = "&" if "?" in location else "?"
        response = self._request(
            "PUT",
            f"{location}{separator}digest={digest}",
            data=data,
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
        )
        if response.status_code == 400 and "DIGEST_INVALID" in response.text:
            raise RegistryError(
                f"{self.host} refused blob {digest[7:19]}: it does not match its digest; "
                "the store's copy is damaged (`ccache verify` names the entry)"
            )
        self._check(response, "upload a blob to")

    def blob(self, digest: str, size: int, limit: int | None = None) -> bytes:
        """A small blob (a config, a catalog), whole and checked against its digest."""
        if limit is not None and size > limit:
            raise ArchiveError(f"{self.reference}: blob {digest[7:19]} is larger than any ccache writes")
        return b"".join(self.stream(digest, size))

    def stream(self, digest: str, size: int, hashed: bool = True) -> Iterator[bytes]:
        """A blob's bytes as they arrive, never more than its size; a connection cut
        midway is resumed where it stopped (a few times). Raises ArchiveError once the
        bytes do not make up the blob (another size; with `hashed`, another digest):
        nothing read from it may be kept. A caller that passes `hashed=False` checks
        every byte it keeps in another way."""
        hasher = hashlib.sha256() if hashed else None
        offset = 0
        failures = 0
        while True:
            # identity: the offsets of a resumed download count the blob's own bytes
            headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
            try:
                with (
                    self._request("GET", f"{self._base}/blobs/{digest}", headers=headers, stream=True) as response,
                    _deadline(response, size - offset, self.host),
                ):
                    if response.status_code == 404:
                        raise ArchiveError(
                            f"{self.reference} is incomplete: the registry lacks its blob {digest[7:19]}"
                        )
                    self._check(response, "download a blob of")
                    if offset and response.status_code != 206:
                        raise RegistryError(f"{self.host} cannot resume a download (no HTTP range support)")
                    for chunk in response.iter_content(_CHUNK):
                        offset += len(chunk)
                        if offset > size:
                            raise ArchiveError(
                                f"{self.reference}: blob {digest[7:19]} is larger than its manifest says; "
                                "the registry's copy is corrupt"
                            )
                        if hasher is not None:
                            hasher.update(chunk)
                        yield chunk
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                failures += 1
                if failures > len(_RETRY_DELAYS_S):
                    raise RegistryError(
                        f"lost the connection to {self.host} while downloading: {_reason(exc)}"
                    ) from exc
                time.sleep(_RETRY_DELAYS_S[failures - 1])
                continue
            break
        if offset != size or (hasher is not None and "sha256:" + hasher.hexdigest() != digest):
            raise ArchiveError(
                f"{self.reference}: blob {digest[7:19]} does not match its digest; the registry's copy is corrupt"
            )

    # -- requests ------------------------------------------------------------

    def _request(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, retry: bool = True, **kwargs: Any
    ) -> requests.Response:
        for attempt in range(len(_RETRY_DELAYS_S) + 1):
            last = not retry or attempt == len(_RETRY_DELAYS_S)
            if hasattr(kwargs.get("data"), "seek"):
                kwargs["data"].seek(0)  # a file sent again is sent from its start
            try:
                response = self._send(method, url, dict(headers or {}), **kwargs)
            except requests.exceptions.SSLError as exc:
                raise RegistryError(
                    f"TLS with {self.host} failed ({_reason(exc)}); a registry serving plain HTTP needs --insecure"
                ) from exc
            except requests.RequestException as exc:
                if last:
                    raise RegistryError(f"cannot reach registry {self.host}: {_reason(exc)}") from exc
            else:
                if response.status_code not in _RETRIED_STATUS or last:
                    return response
                response.close()
            time.sleep(_RETRY_DELAYS_S[attempt])
        raise AssertionError("unreachable")

    def _send(self, method: str, url: str, headers: dict[str, str], **kwargs: Any) -> requests.Response:
        """One request, with the credentials held; a 401 answered once (credentials.py)."""
        credentials = self._credentials
        sent = {**headers, **(credentials.authorization() if credentials else {})}
        response = self._session.request(method, url, headers=sent, timeout=_timeout_s(), **kwargs)
        if response.status_code != 401:
            return response
        try:
            again = (credentials or self._load_credentials()).answer(response, sent)
        except BaseException:
            response.close()
            raise
        if again is None:
            return response  # no credentials, or wrong ones: the caller reports the 401
        response.close()
        if hasattr(kwargs.get("data"), "seek"):
            kwargs["data"].seek(0)
        return self._session.request(method, url, headers=again, timeout=_timeout_s(), **kwargs)

    def _load_credentials(self) -> Credentials:
        with self._credentials_lock:
            if self._credentials is None:
                from .credentials import Credentials

                self._credentials = Credentials(self.host, self.ref.repository, self.scheme, self._session)
            return self._credentials

    def _check(self, response: requests.Response, action: str) -> None:
        if response.status_code < 300:
            return
        if response.status_code in (401, 403):
            raise RegistryError(
                f"{self.host} denied access to {self.ref.repository} (HTTP {response.status_code}): "
                + login_hint(self.host)
            )
        raise RegistryError(
            f"cannot {action} {self.reference}: HTTP {response.status_code} {_registry_message(response)}".rstrip()
        )


def _is_loopback(host: str) -> bool:
    name = host[1 : host.find("]")] if host.startswith("[") else host.split(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _timeout_s() -> float:
    """Seconds to connect, to get a response's headers, and between two reads of it."""
    return _setting(TIMEOUT_ENV, 15.0)


def _setting(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise BadInputError(f"{name}={text!r}: give a positive number")
    return value


@contextlib.contextmanager
def _deadline(response: requests.Response, size: int, host: str) -> Iterator[None]:
    """Give up a response whose body of `size` bytes arrives slower than the minimum
    rate (a registry that sends a byte every few seconds never trips the timeout
    between reads): past `timeout + size / rate` its connection is shut, which ends
    the read where it blocks."""
    seconds = _timeout_s() + size / _setting(MIN_RATE_ENV, 64 * 1024)
    expired = threading.Event()

    def shut() -> None:
        expired.set()
        sock = getattr(getattr(response.raw, "connection", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(seconds, shut)
    timer.daemon = True
    timer.start()
    try:
        yield
    except Exception as exc:
        if expired.is_set():
            raise requests.exceptions.ReadTimeout(
                f"{host} sent it slower than {MIN_RATE_ENV} allows (gave up after {seconds:.0f} s)"
            ) from exc
        raise
    finally:
        timer.cancel()
    if expired.is_set():
        raise requests.exceptions.ReadTimeout(f"{host} sent it slower than {MIN_RATE_ENV} allows")


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "slower than" in text:
        return text
    for marker in ("Connection refused", "Name or service not known", "timed out", "Connection reset"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _registry_message(response: requests.Response) -> str:
    try:
        errors = response.json().get("errors", [])
        return "; ".join(str(error.get("message", error.get("code", ""))) for error in errors)[:200]
    except (ValueError, AttributeError):
        return response.reason or ""
