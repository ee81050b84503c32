"""Unit tests of the key: mismatches against a machine, and how traced sources are named."""

from __future__ import annotations

from pathlib import Path

from ccache_cli.in_program.fingerprint import DYNAMIC, components_for, inductor_env, mismatches
from ccache_cli.key import sources
from ccache_cli.store.hashing import sha256_file

CPU_ENTRY = {
    "python": "3.11.7",
    "torch": "2.13.0+cpu",
    "cuda": None,
    "hip": None,
    "machine": "x86_64",
    "cpu_isa": "avx512",
    "cpu_threads": DYNAMIC,
}
GPU_ENTRY = {
    "python": "3.12.3",
    "torch": "2.11.0+cu130",
    "cuda": "13.0",
    "hip": None,
    "machine": "x86_64",
    "triton": "3.6.0",
    "gpu": "NVIDIA H200",
    "capability": "sm_90",
}


def test_components_depend_on_the_device() -> None:
    assert set(components_for("cpu")) == set(CPU_ENTRY)
    assert set(components_for("cuda:1")) == set(GPU_ENTRY)


def test_an_identical_machine_has_no_mismatch() -> None:
    assert mismatches(CPU_ENTRY, "cpu", dict(CPU_ENTRY)) == []
    assert mismatches(GPU_ENTRY, "cuda:0", {**GPU_ENTRY, "cpu_isa": "other"}) == []  # not a GPU entry's part


def test_each_differing_component_is_named_with_both_values() -> None:
    machine = {**GPU_ENTRY, "torch": "2.12.0+cu130", "gpu": "NVIDIA A100", "capability": "sm_80"}
    found = mismatches(GPU_ENTRY, "cuda:0", machine)
    assert [(m.component, m.entry, m.target) for m in found] == [
        ("torch", "2.11.0+cu130", "2.12.0+cu130"),
        ("gpu", "NVIDIA H200", "NVIDIA A100"),
        ("capability", "sm_90", "sm_80"),
    ]
    assert str(found[0]) == "torch: entry has '2.11.0+cu130', target has '2.12.0+cu130'"


def test_unknown_components_are_not_compared_and_dynamic_threads_fit_any_count() -> None:
    static = {"python": "3.11.7", "machine": "x86_64"}  # what is readable without torch
    assert mismatches(CPU_ENTRY, "cpu", static) == []
    assert mismatches(CPU_ENTRY, "cpu", {**CPU_ENTRY, "cpu_threads": 64}) == []
    fixed = {**CPU_ENTRY, "cpu_threads": 8}
    assert [m.component for m in mismatches(fixed, "cpu", {**CPU_ENTRY, "cpu_threads": 64})] == ["cpu_threads"]


def test_sources_are_named_relative_to_their_root_never_absolutely(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "pkg" / "sub").mkdir(parents=True)
    files = {"pkg/__init__.py": "", "pkg/sub/model.py": "x = 1\n", "script.py": "y = 2\n"}
    for relative, text in files.items():
        (root / relative).write_text(text)
    elsewhere = tmp_path / "elsewhere.py"
    elsewhere.write_text("z = 3\n")
    traced = [str(root / relative) for relative in files] + [str(elsewhere), "<string>", str(root / "missing.py")]
    collected = sources.collect(traced, [str(root)], torch_dir=None)
    assert [(s.module, s.path) for s in collected] == [
        ("elsewhere", "elsewhere.py"),  # outside every root: its file name
        ("pkg", "pkg/__init__.py"),
        ("pkg.sub.model", "pkg/sub/model.py"),
        ("script", "script.py"),
    ]
    assert collected[2].sha256 == sha256_file(root / "pkg/sub/model.py")
    assert not any(str(tmp_path) in s.path for s in collected)


def test_the_standard_library_and_torch_are_not_sources(tmp_path: Path) -> None:
    fake_torch = tmp_path / "torch"
    fake_torch.mkdir()
    (fake_torch / "nn.py").write_text("")
    traced = [
        sources.__file__.replace("key/sources.py", "errors.py"),
        str(fake_torch / "nn.py"),
        __import__("os").__file__,
    ]
    # The roots given, not this process's sys.path, which other tests in it may have changed.
    project = str(Path(sources.__file__).parents[2])
    collected = sources.collect(traced, [str(tmp_path), project], torch_dir=str(fake_torch))
    assert [s.module for s in collected] == ["ccache_cli.errors"]


def test_check_finds_changed_and_missing_sources(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("a = 1\n")
    (tmp_path / "gone.py").write_text("b = 1\n")
    collected = sources.collect([str(tmp_path / "m.py"), str(tmp_path / "gone.py")], [str(tmp_path)], None)
    assert {s.state for s in sources.check(collected, [str(tmp_path)])} == {"fresh"}
    (tmp_path / "m.py").write_text("a = 2\n")
    (tmp_path / "gone.py").unlink()
    states = {status.source.module: status.state for status in sources.check(collected, [str(tmp_path)])}
    assert states == {"m": "changed", "gone": "missing"}


def test_the_key_holds_inductor_settings_of_what_is_compiled_not_of_how_or_where() -> None:
    environ = {
        "TORCHINDUCTOR_MAX_AUTOTUNE": "1",
        "TORCHINDUCTOR_CPP_DYNAMIC_THREADS": "1",
        "TORCHINDUCTOR_CACHE_DIR": "/tmp/x",
        "TORCHINDUCTOR_COMPILE_THREADS": "1",
        "TORCHINDUCTOR_WORKER_START": "fork",
        "PATH": "/usr/bin",
    }
    assert inductor_env(environ) == {"TORCHINDUCTOR_CPP_DYNAMIC_THREADS": "1", "TORCHINDUCTOR_MAX_AUTOTUNE": "1"}
