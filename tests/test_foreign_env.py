"""ccache installed apart from the program: `precompile --python` compiles in the
program's environment, and `ccache run` lays bytecode out for the Python it starts."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from environments import foreign_venv
from helpers.cli import MODELS, ccache, ccache_json

pytestmark = pytest.mark.slow  # real compiles or kill -9 loops

PROGRAM = textwrap.dedent(
    """
    import json, os, torch
    import torch._dynamo.utils as utils
    from foreign_model import build, example_inputs
    compiled = torch.compile(build(), dynamic=False)
    with torch.no_grad():
        compiled(*example_inputs(2))
    counters = utils.counters["inductor"]
    print(json.dumps({"cached": utils.__cached__, "served": os.path.isfile(utils.__cached__),
                      "hits": counters["fxgraph_cache_hit"], "misses": counters["fxgraph_cache_miss"]}))
    """
)


@pytest.mark.extended
def test_a_program_in_another_venv_gets_its_entry_and_bytecode(tmp_path: Path) -> None:
    python = foreign_venv(tmp_path / "venv")
    [site] = (tmp_path / "venv" / "lib").glob("python3*/site-packages")
    # A model only that environment can import: the entry must have been compiled there.
    shutil.copy(MODELS / "small.py", site / "foreign_model.py")
    store = tmp_path / "store"
    result = ccache_json(
        "precompile", "foreign_model", "--sizes", "2", "--no-aot", "--python", str(python), store=store, cwd=tmp_path
    )
    entry = result["entry"]
    assert [s["module"] for s in entry["sources"]] == ["foreign_model"]
    assert entry["artifacts"]["bytecode"] > 500  # that environment's compile stack

    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    empty = tmp_path / "empty-pycache"
    empty.mkdir()
    # As in an image: no .pyc written, none of torch's found.
    env = {
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPYCACHEPREFIX": str(empty),
        "CCACHE_CLI_VIEWS": str(tmp_path / "views"),
    }
    run = ccache("run", "--", str(python), str(program), store=store, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["misses"] == 0 and report["hits"] == 1
    # torch's compile stack came from the stored bytecode, laid out for that venv's paths.
    assert report["served"] and report["cached"].startswith(str(tmp_path / "views"))
    assert str(site) in report["cached"]
    assert "cannot tell" not in run.stderr

    # ccache's own interpreter cannot import the model: the entry is that environment's.
    assert ccache("run", "--", sys.executable, "-c", "import foreign_model", store=store, cwd=tmp_path).returncode != 0
