"""The deployment recipes in deploy/, run as their command sequences without Docker or
Kubernetes: the same scripts, the same server command, the same CI check."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from environments import foreign_venv
from helpers.cli import EXAMPLE
from helpers.serving import serve_counters, write_serve_script
from registry_server import NO_REGISTRY, REGISTRY, Registry

from ccache_cli.registry.reference import is_reference

pytestmark = pytest.mark.slow  # real compiles or kill -9 loops

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _shell(command: list[str], store: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """As the recipes run: `ccache` on PATH, the store from CCACHE_CLI_STORE."""
    env = {
        **os.environ,
        "CCACHE_CLI_STORE": str(store),
        "CCACHE_CLI_VIEWS": str(cwd / "views"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


def _server_command(recipe: str) -> list[str]:
    """The server's command line as a recipe writes it (a JSON array)."""
    match = re.search(r'\["ccache(?:-cli)?", "run", "--", [^\]]*\]', recipe)
    assert match, "the recipe no longer starts the server under ccache run"
    return json.loads(match.group(0))


@pytest.mark.skipif(REGISTRY is None, reason=NO_REGISTRY)
@pytest.mark.extended
def test_dockerfile_kubernetes_and_ci_recipes(tmp_path: Path, example_store: Path) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    kubernetes = (DEPLOY / "kubernetes.yaml").read_text()
    own_env = (DEPLOY / "Dockerfile.own-env").read_text()
    assert "CCACHE_CLI_PYTHON=/srv/venv/bin/python" in own_env and "deploy/build-cache.sh" in own_env
    workflow = (DEPLOY / "verify-cache.yml").read_text()
    assert "deploy/build-cache.sh" in dockerfile and "deploy/install-cache.sh" in dockerfile
    assert "deploy/install-cache.sh" in kubernetes
    archive = tmp_path / "model-cache.tar.zst"
    registry = Registry(tmp_path / "registry")
    registry.start()
    ref = f"{registry.host}/team/model-cache:v1"

    # Builder stage and CI's build job (a GPU builder in production; the CPU here): pack and
    # push. The builder's store already holds the example for these sizes, as a builder's
    # cache volume would (the compile itself is precompile's tests' subject): precompile
    # finds the entry.
    shutil.copytree(example_store, tmp_path / "builder")
    built = _shell(
        [str(DEPLOY / "build-cache.sh"), EXAMPLE, "1,8", "cpu", str(archive), ref], tmp_path / "builder", tmp_path
    )
    assert built.returncode == 0, built.stderr
    assert "nothing compiled" in built.stdout, built.stdout
    target = tmp_path / "model-cache.fingerprint.json"
    assert archive.is_file() and json.loads(target.read_text())["torch"]

    # CI: the workflow's verify line, on the pushed artifact and the deployment fingerprint.
    [verify_line] = [line.split("run:", 1)[1] for line in workflow.splitlines() if "ccache verify" in line]
    verify = [
        ref if w == "$CACHE_REF" else str(target) if w.endswith(".fingerprint.json") else w
        for w in shlex.split(verify_line)
    ]
    checked = _shell(verify, tmp_path / "ci-store", tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert (tmp_path / "verify.xml").is_file()

    # Runtime stage: unpack the archive into the store the server reads, and check; the
    # initContainer: its own command, pulling from the registry.
    store = tmp_path / "runtime-store"
    installed = _shell([str(DEPLOY / "install-cache.sh"), str(archive), str(target)], store, tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    init = re.search(r'\["deploy/install-cache.sh", "([^"]+)"\]', kubernetes)
    assert init and is_reference(init.group(1)), "the initContainer no longer pulls with install-cache.sh"
    pulled_store = tmp_path / "pulled-store"
    pulled = _shell([str(DEPLOY / "install-cache.sh"), ref, str(target)], pulled_store, tmp_path)
    assert pulled.returncode == 0 and "Pulled 1 new entries" in pulled.stdout, pulled.stdout + pulled.stderr
    registry.kill()

    # The server, as the Dockerfile's CMD and the Deployment's container start it, from
    # a store that is read-only from then on (an image layer, a read-only mount).
    for path in [store, *store.rglob("*"), pulled_store, *pulled_store.rglob("*")]:
        os.chmod(path, path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    serve = write_serve_script(tmp_path)
    # The own-env recipe's server lives in a venv without ccache-cli.
    server_venv = foreign_venv(tmp_path / "srv-venv")
    for recipe, python in ((dockerfile, "python"), (kubernetes, "python"), (own_env, "/srv/venv/bin/python")):
        command = _server_command(recipe)
        assert command[-2:] == [python, "serve.py"]
        interpreter = sys.executable if python == "python" else str(server_venv)
        command = [*command[:-2], interpreter, str(serve), "torch", "[1]"]
        result = _shell(command, pulled_store if recipe is kubernetes else store, tmp_path)
        counters = serve_counters(result)
        # The server's own torch.compile runs the stored code: nothing traced, nothing compiled.
        assert counters["same"] and counters["frames"] == 0 and counters.get("fxgraph_cache_miss", 0) == 0
        assert "cannot tell" not in result.stderr
    for path in [store, *store.rglob("*"), pulled_store, *pulled_store.rglob("*")]:
        os.chmod(path, path.stat().st_mode | stat.S_IWUSR)
