"""Python environments for the tests and benchmarks: a second venv holding this one's
packages but not ccache-cli, as a server's own environment beside ccache's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def foreign_venv(folder: Path) -> Path:
    """A second virtual environment with this one's packages (torch among them) at paths
    of its own, but not ccache-cli: each of this environment's site-packages entries
    linked into its own. Its Python executable."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    ours = Path(torch_site_packages())
    [theirs] = (folder / "lib").glob("python3*/site-packages")
    for item in ours.iterdir():
        if not item.name.startswith(("ccache_cli", "__editable__", "__pycache__")):
            (theirs / item.name).symlink_to(item)
    return folder / "bin" / "python"


def torch_site_packages() -> str:
    import torch

    return str(Path(torch.__file__).parent.parent)
