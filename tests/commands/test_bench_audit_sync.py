"""The bench measures the audit's floor on the audit's own file system: a record-sized append made durable by
fsync, fdatasync or an O_DSYNC write, p50 and p99, leaving nothing behind."""

from __future__ import annotations

from pathlib import Path

from neurostimd.commands.bench.loop import audit_sync


def test_audit_sync_reports_each_way_and_cleans_up(tmp_path: Path) -> None:
    out = audit_sync(tmp_path, n=50)
    for way in ("fsync", "fdatasync", "odsync"):
        p50, p99 = out[f"audit.{way}_p50_ms"], out[f"audit.{way}_p99_ms"]
        assert 0 < p50 <= p99
    assert list(tmp_path.iterdir()) == []
