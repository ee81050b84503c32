"""A real OCI registry for the tests: the CNCF distribution registry
(`docker-registry serve`, Debian's docker-registry package) on 127.0.0.1."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

REGISTRY = shutil.which("docker-registry")
NO_REGISTRY = "needs the distribution registry: apt-get install docker-registry"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Registry:
    """A real registry on 127.0.0.1, its storage in a temporary folder, its log kept."""

    def __init__(self, folder: Path, htpasswd: Path | None = None) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = folder / "storage"
        self.log = folder / "registry.log"
        auth = f"auth:\n  htpasswd:\n    realm: ccache-tests\n    path: {htpasswd}\n" if htpasswd else ""
        self.config = folder / "config.yml"
        self.config.write_text(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
            f"storage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: {self.storage}\n"
            f"http:\n  addr: {self.host}\n{auth}"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log, "ab")
        self.process = subprocess.Popen([REGISTRY, "serve", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                requests.get(f"http://{self.host}/v2/", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"the registry did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def blob_uploads(self) -> int:
        """Blob uploads completed so far, from the registry's access log."""
        return len(re.findall(r'"PUT /v2/[^ ]+/blobs/uploads/[^ ]+ HTTP/1\.1" 201', self.log.read_text()))

    def blob_downloads(self) -> int:
        return len(re.findall(r'"GET /v2/[^ ]+/blobs/sha256:[0-9a-f]+ HTTP/1\.1" 20[06]', self.log.read_text()))

    def blob_data(self, digest: str) -> Path:
        hexdigest = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
