"""The layering check (tools/check_layers.py): the repository obeys it, and the checker finds what it claims to."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "check_layers.py"


def _load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


cl = _load_checker()


def _tree(root: Path, files: dict[str, str], *, links: bool = False) -> Path:
    """A tiny repository: each package folder gets its __init__.py; `links` adds neurostimd/drivers and
    neurostimd/firmware_sim as links to the top-level folders, as in the real tree."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for top in ("neurostimd", "drivers", "firmware_sim", "tests"):
        for folder in [root / top, *(p for p in (root / top).rglob("*") if p.is_dir())]:
            if folder.exists() and not (folder / "__init__.py").exists():
                (folder / "__init__.py").write_text("")
    if links:
        for name in ("drivers", "firmware_sim"):
            (root / name).mkdir(exist_ok=True)
            (root / "neurostimd" / name).symlink_to(Path("..") / name, target_is_directory=True)
    return root


def _lines(found: list[object]) -> list[str]:
    return [str(v) for v in found]


def test_the_repository_obeys_the_layers() -> None:
    res = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, f"tools/check_layers.py found violations:\n{res.stdout}{res.stderr}"
    assert res.stdout.strip().endswith("layers: ok")


def test_a_cycle_through_a_lazy_import_is_found_as_a_chain(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "neurostimd/a.py": "import neurostimd.b\n",
        "neurostimd/b.py": "from neurostimd import c\n",
        "neurostimd/c.py": "def late():\n    from neurostimd.a import thing\n    return thing\n",
    })
    found = cl.check(root, runtime=False)
    assert _lines(found) == [
        "neurostimd/a.py:1: neurostimd.a imports neurostimd.b (rule: no import cycles, lazy imports included: "
        "neurostimd.a -> neurostimd.b [neurostimd/a.py:1] -> neurostimd.c [neurostimd/b.py:1] "
        "-> neurostimd.a (lazy) [neurostimd/c.py:2])"]


def test_every_import_in_a_cycle_is_shown_and_each_cycle_once(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "neurostimd/a.py": "import neurostimd.b\nimport neurostimd.c\n",
        "neurostimd/b.py": "import neurostimd.a\n",
        "neurostimd/c.py": "import neurostimd.a\n",
    })
    assert cl.cycles(cl.load(root)) == [["neurostimd.a", "neurostimd.b", "neurostimd.a"],
                                        ["neurostimd.a", "neurostimd.c", "neurostimd.a"]]


def test_type_checking_imports_close_no_cycle_but_obey_the_layer_rules(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "neurostimd/a.py": "import neurostimd.b\n",
        "neurostimd/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from neurostimd.a import A\n",
        "neurostimd/core/x.py": "import typing\nif typing.TYPE_CHECKING:\n    from neurostimd.loop import ClosedLoop\n"
                                "else:\n    import neurostimd.core.y\n",
        "neurostimd/core/y.py": "",
        "neurostimd/loop.py": "",
    })
    tree = cl.load(root)
    assert cl.cycles(tree) == []
    hows = {(i.module, i.target): i.how for i in tree.imports}
    assert hows[("neurostimd.core.x", "neurostimd.loop")] == "type_checking"
    assert hows[("neurostimd.core.x", "neurostimd.core.y")] == "top"  # the else branch runs
    assert [v.imported for v in cl.check(root, runtime=False)] == ["neurostimd.loop (TYPE_CHECKING)"]


def test_a_core_import_of_outputs_is_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "neurostimd/core/gate.py": '"""Doc."""\n\nfrom neurostimd.outputs.audit import AuditLog\n',
        "neurostimd/outputs/audit.py": "class AuditLog: ...\n",
    })
    found = cl.check(root, runtime=False)
    assert len(found) == 1
    assert str(found[0]).startswith("neurostimd/core/gate.py:3: neurostimd.core.gate imports neurostimd.outputs.audit "
                                    "(rule: core imports of neurostimd only neurostimd.core, ")


def test_core_may_import_itself_the_driver_types_and_the_errors_only(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "neurostimd/core/a.py": "from neurostimd.core import b\nfrom neurostimd.drivers.types import StimParams\n"
                                "from neurostimd.errors import SafetyViolation\nimport numpy\n",
        "neurostimd/core/b.py": "def f():\n    import neurostimd.drivers.transport\n    import serial\n",
        "neurostimd/errors.py": "",
        "drivers/types.py": "",
        "drivers/transport.py": "",
    }, links=True)
    assert [(v.file, v.line, v.imported) for v in cl.check(root, runtime=False)] == [
        ("neurostimd/core/b.py", 2, "neurostimd.drivers.transport (lazy)"),
        ("neurostimd/core/b.py", 3, "serial (lazy)"),
    ]


def test_relative_imports_are_resolved_against_the_importing_module(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "drivers/types.py": "",
        "drivers/neurostim_board/driver.py": "from ..types import StimParams\nfrom ... import loop\n"
                                             "from . import codec\n",
        "drivers/neurostim_board/codec.py": "",
        "neurostimd/core/x.py": "from ..outputs import audit\n",
        "neurostimd/outputs/audit.py": "",
        "neurostimd/loop.py": "",
    }, links=True)
    tree = cl.load(root)
    assert sorted(i.target for i in tree.imports if i.module == "neurostimd.drivers.neurostim_board.driver") == [
        "neurostimd.drivers.neurostim_board.codec", "neurostimd.drivers.types", "neurostimd.loop"]
    assert _lines(cl.check(root, runtime=False)) == [
        "drivers/neurostim_board/driver.py:2: neurostimd.drivers.neurostim_board.driver imports neurostimd.loop "
        "(rule: drivers import nothing of neurostimd outside neurostimd.drivers, nor the simulator)",
        "neurostimd/core/x.py:1: neurostimd.core.x imports neurostimd.outputs.audit (rule: core imports of neurostimd "
        "only neurostimd.core, neurostimd.drivers.types, neurostimd.errors; pass what it needs in as an argument)",
    ]


def test_a_relative_import_above_the_top_is_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"neurostimd/a.py": "from ... import x\n"})
    assert [v.rule for v in cl.check(root, runtime=False)] == ["a relative import must stay inside its package"]


def test_firmware_sim_may_import_drivers_and_itself_only(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "firmware_sim/board.py": "from neurostimd.drivers.neurostim_board import codec\n"
                                 "from neurostimd.firmware_sim import plant\nfrom neurostimd.core import safety\n",
        "firmware_sim/plant.py": "",
        "drivers/neurostim_board/codec.py": "from neurostimd.firmware_sim.plant import Plant\n",
        "neurostimd/core/safety.py": "",
    })
    assert [(v.file, v.imported) for v in cl.check(root, runtime=False)] == [
        ("drivers/neurostim_board/codec.py", "neurostimd.firmware_sim.plant"),
        ("firmware_sim/board.py", "neurostimd.core.safety"),
    ]


def test_top_level_drivers_and_firmware_sim_names_are_reported_everywhere(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "neurostimd/loop.py": "def f():\n    import firmware_sim.board\n",
        "drivers/types.py": "",
        "tests/test_x.py": "from drivers.types import StimParams\nfrom unittest import mock\n\n\n"
                           "def test():\n    with mock.patch('drivers.transport.SerialLink'):\n        pass\n",
    })
    assert [(v.file, v.line, v.imported) for v in cl.check(root, runtime=False)] == [
        ("neurostimd/loop.py", 2, "firmware_sim.board (lazy)"),
        ("tests/test_x.py", 1, "drivers.types"),
        ("tests/test_x.py", 6, "drivers.transport (dynamic)"),
    ]


def test_table_strings_and_import_module_are_dynamic_imports(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "neurostimd/registry.py": 'TABLE = {"a": "neurostimd.devices:Settings", "t": "12:30", "b": "not.ours:X"}\n',
        "neurostimd/devices.py": "import importlib\n\n\ndef f():\n    importlib.import_module('neurostimd.registry')\n",
    })
    tree = cl.load(root)
    dynamic = sorted((i.module, i.target) for i in tree.imports if i.how == "dynamic")
    assert dynamic == [("neurostimd.devices", "neurostimd.registry"), ("neurostimd.registry", "neurostimd.devices")]
    assert cl.cycles(tree) == [["neurostimd.devices", "neurostimd.registry", "neurostimd.devices"]]


def test_linked_folders_are_read_once_under_their_own_path(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"drivers/base.py": "import neurostimd.loop\n", "neurostimd/loop.py": ""}, links=True)
    tree = cl.load(root)
    assert tree.modules["neurostimd.drivers.base"] == "drivers/base.py"
    assert [v.file for v in cl.check(root, runtime=False)] == ["drivers/base.py"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_the_fresh_interpreter_probe_finds_a_heavy_library_and_its_chain(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "serial/__init__.py": "",  # stand-ins, found ahead of any installed ones by the probe
        "pylsl/__init__.py": "",
        "neurostimd/errors.py": "import serial\n\n\nclass SafetyViolation(Exception): ...\n",
        "neurostimd/core/a.py": "from neurostimd.errors import SafetyViolation\n",
        "neurostimd/core/b.py": "def f():\n    import pylsl\n",
        "neurostimd/core/c.py": "raise RuntimeError('broken on import')\n",
        "neurostimd/config.py": "import neurostimd.sources.lsl\n",
        "neurostimd/sources/lsl.py": "import pylsl\n",
    }, links=True)
    runtime = sorted(cl.runtime_violations(cl.load(root)))
    assert [(v.file, v.line, v.module, v.imported) for v in runtime] == [
        ("neurostimd/config.py", 1, "neurostimd.config", "pylsl at run time"),
        ("neurostimd/core/a.py", 1, "neurostimd.core.a", "serial at run time"),
        ("neurostimd/core/c.py", 1, "neurostimd.core.c", "?"),
    ]
    assert "neurostimd.core.a -> neurostimd.errors [neurostimd/core/a.py:1] -> serial [neurostimd/errors.py:1]" \
        in runtime[1].rule
    assert "RuntimeError: broken on import" in runtime[2].rule
    # b's pylsl import is lazy: the probe does not see it, the static core rule does
    assert [v.imported for v in cl.check(root, runtime=False)] == ["pylsl (lazy)"]


def test_the_script_prints_each_violation_and_exits_1(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"neurostimd/core/x.py": "import neurostimd.service.daemon\n",
                            "neurostimd/service/daemon.py": ""})
    res = subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), "--no-runtime"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 1
    assert res.stdout.splitlines()[0].startswith(
        "neurostimd/core/x.py:1: neurostimd.core.x imports neurostimd.service.daemon (rule: core imports")
    (root / "neurostimd/core/x.py").write_text("import neurostimd.core\n")
    res = subprocess.run([sys.executable, str(SCRIPT), "--root", str(root)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert (res.returncode, res.stdout.strip()) == (0, "layers: ok"), res.stdout + res.stderr


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_citation_of_the_design_page_names_one_of_its_sections() -> None:
    """Code and docs cite docs/design.md by its name and by sections it has (links and 'Section' citations)."""
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    headings = {line.lstrip("#").strip() for line in design.splitlines() if line.startswith("#")}
    anchors = {_slug(h) for h in headings}
    old_name = "DESIGN" + ".md"  # the page's old name, which never existed in the repository
    bad: list[str] = []
    for path in sorted([*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"),
                        *(p for top in ("neurostimd", "drivers", "firmware_sim", "tests", "tools")
                          for p in (ROOT / top).rglob("*.py") if not p.is_symlink())]):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT)
        if old_name in text:
            bad.append(f"{rel}: cites {old_name}; the page is docs/design.md")
        bad += [f"{rel}: design.md#{a} is no section of docs/design.md"
                for a in re.findall(r"design\.md#([\w-]+)", text) if a not in anchors]
        bad += [f"{rel}: docs/design.md has no section {h!r}"
                for h in re.findall(r"docs/design\.md, '([^']+)'", text) if h not in headings]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", ["drivers", "drivers.types", "firmware_sim", "firmware_sim.board"])
def test_the_folders_cannot_be_imported_under_a_second_name(name: str) -> None:
    """From the project root `drivers` and `firmware_sim` are importable folders; a second copy of them would have
    its own exception classes (a `drivers.errors.DriverError` escaped `except neurostimd.drivers.errors.DriverError`).
    Importing them by the top-level name fails, saying what to import instead."""
    res = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode != 0 and f"import this package as neurostimd.{name.split('.')[0]}" in res.stderr


def test_sources_outputs_and_the_model_import_nothing_above_them(tmp_path: Path) -> None:
    """An output that reaches up to the service (the exit codes of a command that lived in outputs/) or to the loop
    is reported; the same imports from a command are fine."""
    root = _tree(tmp_path, {
        "neurostimd/outputs/status.py": "from neurostimd.service.exitcodes import EX_CONFIG\n",
        "neurostimd/sources/lsl.py": "def f():\n    from neurostimd.loop import ClosedLoop\n",
        "neurostimd/model/train.py": "from neurostimd.commands import cli\n",
        "neurostimd/commands/status.py": "from neurostimd.service.exitcodes import EX_CONFIG\n"
                                         "from neurostimd import loop\n",
        "neurostimd/service/exitcodes.py": "EX_CONFIG = 78\n",
        "neurostimd/commands/cli.py": "",
        "neurostimd/loop.py": "class ClosedLoop: ...\n",
    })
    found = sorted((v.module, v.imported.split(" ")[0]) for v in cl.check(root, runtime=False))
    assert found == [("neurostimd.model.train", "neurostimd.commands.cli"),
                     ("neurostimd.outputs.status", "neurostimd.service.exitcodes"),
                     ("neurostimd.sources.lsl", "neurostimd.loop")]
