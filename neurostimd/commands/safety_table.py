"""`python -m neurostimd.commands.safety_table --table`: what the safety gate does to a stimulation table, as the
markdown table of docs/safety.md."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from neurostimd.core.safety import SafetyConfig, evaluate_table, table_markdown
from neurostimd.core.stimtable import StimTable, notebook_table


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m neurostimd.commands.safety_table",
                                description="Print what the safety gate does to a stimulation table.")
    p.add_argument("--table", action="store_true", help="print the worked table (markdown) for docs/safety.md")
    p.add_argument("--stim-table", help="stimulation table file (.json or .toml); default: the notebook's table")
    p.add_argument("--areas", default="0.06,0.2,1.0", help="comma-separated electrode areas in cm²")
    args = p.parse_args(argv)
    if not args.table:
        p.print_help()
        return 2
    table = StimTable.from_file(args.stim_table) if args.stim_table else notebook_table()
    try:
        areas = [float(a) for a in args.areas.split(",") if a.strip()]
    except ValueError as err:
        print(f"--areas: {err}; give numbers in cm², e.g. 0.06,0.2,1.0", file=sys.stderr)
        return 2
    if not areas or any(not (a > 0 and math.isfinite(a)) for a in areas):
        print("--areas: every electrode area must be a positive number of cm²", file=sys.stderr)
        return 2
    sys.stdout.write(table_markdown(evaluate_table(SafetyConfig.model_validate({}), table, areas_cm2=areas)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
