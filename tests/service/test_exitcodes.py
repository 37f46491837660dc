"""Exit codes live in neurostimd/service/exitcodes.py only: no module defines its own EX_* or returns a sysexits
number as a literal, and the README's table and the systemd unit name the same codes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from neurostimd.service import exitcodes

ROOT = Path(__file__).resolve().parents[2]
CODES = {name: getattr(exitcodes, name) for name in exitcodes.__all__}
SYSEXITS = {v for v in CODES.values() if v >= 64}


def _modules() -> list[Path]:
    return sorted(p for d in ("neurostimd", "drivers", "firmware_sim") for p in (ROOT / d).rglob("*.py")
                  if not p.is_symlink() and p.resolve().is_relative_to(ROOT / d))


def test_no_module_defines_its_own_exit_codes_or_returns_a_sysexits_literal() -> None:
    """Outside exitcodes.py, no `EX_... = N` and no `return N` / `sys.exit(N)` with N a sysexits code."""
    found = []
    for path in _modules():
        if path == ROOT / "neurostimd" / "service" / "exitcodes.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) else []
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: defines {t.id}" for t in targets
                      if isinstance(t, ast.Name) and t.id.startswith("EX_")]
            value = node.value if isinstance(node, ast.Return) else \
                node.args[0] if isinstance(node, ast.Call) and ast.unparse(node.func) in ("sys.exit", "SystemExit") \
                and node.args else None
            if isinstance(value, ast.Constant) and value.value in SYSEXITS:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: exits with the literal {value.value}")
    assert not found, "import the code from neurostimd.service.exitcodes instead:\n" + "\n".join(found)


def test_readme_table_names_every_code_and_no_other() -> None:
    """README.md's exit-code table has one row per code of exitcodes.py, with its number."""
    rows = re.findall(r"^\| (\d+) \| `(EX_[A-Z]+)` \|", (ROOT / "README.md").read_text(), flags=re.MULTILINE)
    assert {name: int(num) for num, name in rows} == CODES
    assert len(rows) == len(CODES)


def test_systemd_does_not_restart_on_a_config_error() -> None:
    """The unit's RestartPreventExitStatus is EX_CONFIG."""
    unit = (ROOT / "systemd" / "neurostimd.service").read_text()
    assert re.findall(r"^RestartPreventExitStatus=(.*)$", unit, flags=re.MULTILINE) == [str(exitcodes.EX_CONFIG)]
