"""`neurostimd audit verify PATH [--json] [--expect SEQ:SHA256]`: check the audit log's hash chain over every
rotated segment (the checking itself is `neurostimd.outputs.audit.verify`)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict

from neurostimd.outputs.audit import verify
from neurostimd.safe_io import UnsafePath
from neurostimd.service.exitcodes import EX_NOINPUT


def _parse_expect(text: str) -> tuple[int, str]:
    seq, sep, h = text.partition(":")
    if not sep or not seq.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", h):
        raise argparse.ArgumentTypeError(f"{text!r}: expected SEQ:SHA256, e.g. 1234:{'ab' * 32}")
    return int(seq), h


def cmd_audit(args: argparse.Namespace) -> int:
    """`neurostimd audit verify PATH [--json] [--expect SEQ:SHA256]`: exit 0 when intact, 1 at the first break."""
    try:
        expect = [_parse_expect(e) for e in args.expect or []]
    except argparse.ArgumentTypeError as err:
        print(f"neurostimd audit verify: --expect {err}", file=sys.stderr)
        return 2
    try:
        report = verify(args.path, expect)
    except (FileNotFoundError, UnsafePath) as err:
        msg = f"{err.strerror}: {err.filename}" if isinstance(err, FileNotFoundError) and err.strerror else str(err)
        print(f"neurostimd audit verify: {msg}", file=sys.stderr)
        return EX_NOINPUT
    if args.json:
        print(json.dumps(asdict(report), indent=2))
        return 0 if report.ok else 1
    for info in report.files:
        seqs = f"seq {info['first_seq']}..{info['last_seq']}" if info["records"] else "no records"
        print(f"  {info['file']}: {info['records']} records, {seqs}")
    for t in report.torn:
        print(f"  torn line {t['file']}:{t['line']} (a crash or a failed write mid-line; named by seq "
              f"{t['acknowledged_by_seq']})")
    for t in report.torn_tail:
        print(f"  torn last line {t['file']}:{t['line']} (a crash mid-write; the next start names it)")
    if report.legacy_records:
        print(f"  {report.legacy_records} records from before the chain (no `prev`): counted, not checked"
              + (f"; {len(report.unjudged_lines)} unreadable lines among them" if report.unjudged_lines else ""))
    if not report.ok:
        b = report.broken or {}
        seq = "" if b.get("seq") is None else f" (seq {b['seq']})"
        print(f"BROKEN at {b.get('file')} line {b.get('line')}{seq}: {b.get('detail')}")
        return 1
    head = report.head or {}
    if report.records == report.legacy_records:
        print(f"unchecked: none of the {report.records} records carries `prev` (written before the chain existed)")
        return 0
    print(f"intact: {report.records} records in {len(report.files)} file(s); chain head seq {head.get('seq')} "
          f"sha256 {head.get('sha256')}")
    print("  the chain shows that no record was changed, removed, added or moved without rewriting every record "
          "after it; compare the head with the journal's last `audit_chain_head` line (or pass it with --expect)")
    return 0
