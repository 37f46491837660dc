"""The journal's native protocol as journald would receive it: a datagram socket stands in for
/run/systemd/journal/socket (systemd is not PID 1 here), and what arrives is parsed the way journald parses it."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from neurostimd.service.journal import encode_record, journal_key
from neurostimd.service.logs import configure_logging

ROOT = Path(__file__).resolve().parents[2]


def parse(datagram: bytes) -> dict[str, bytes]:
    """journald's reading of a native-protocol datagram: KEY=value lines, or KEY, a 64-bit LE length, the value."""
    out: dict[str, bytes] = {}
    i = 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        line = datagram[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            out[k.decode()] = v
            i = nl + 1
        else:
            (n,) = struct.unpack_from("<Q", datagram, nl + 1)
            start = nl + 9
            out[line.decode()] = datagram[start:start + n]
            assert datagram[start + n:start + n + 1] == b"\n"
            i = start + n + 1
    return out


@pytest.fixture
def journal(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = str(tmp_path / "journal.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2.0)
    yield path, s
    s.close()
    structlog.reset_defaults()


def test_each_record_carries_its_priority_event_and_fields(journal) -> None:  # type: ignore[no-untyped-def]
    path, sock = journal
    configure_logging("info", "journal", journal_socket=path)
    log = structlog.get_logger("t")
    log.warning("fault", faults=["stale_data"], raised=["stale_data"], safe_state="off")
    log.info("stim_command", applied={"frequency_hz": 130.0}, state=2)
    log.debug("not_shown")
    log.error("audit_unavailable", error="disk full\nsecond line")
    got = [parse(sock.recv(65536)) for _ in range(3)]
    fault, cmd, err = got
    assert fault["PRIORITY"] == b"4" and fault["EVENT"] == b"fault" and fault["SYSLOG_IDENTIFIER"] == b"neurostimd"
    assert json.loads(fault["FAULTS"]) == ["stale_data"] and fault["SAFE_STATE"] == b"off"
    assert fault["MESSAGE"].startswith(b"fault ")
    assert cmd["PRIORITY"] == b"6" and cmd["EVENT"] == b"stim_command" and json.loads(cmd["APPLIED"]) == {
        "frequency_hz": 130.0}
    assert err["PRIORITY"] == b"3" and err["ERROR"] == b"disk full\nsecond line"  # the length-prefixed form
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(65536)  # the debug record was filtered out


def test_field_names_are_what_journald_accepts() -> None:
    assert journal_key("limited_by") == "LIMITED_BY"
    assert journal_key("_private") == "PRIVATE"
    assert journal_key("9lives") == "F_9LIVES"
    assert journal_key("a-b.c") == "A_B_C"
    rec = parse(encode_record({"event": "x", "level": "info", "message": "a field called message"}))
    assert rec["EVENT"] == b"x" and rec["F_MESSAGE"] == b"a field called message"


def test_a_journal_that_is_gone_loses_no_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No socket at the path: each record goes to stdout as a JSON line instead (never raised, never dropped)."""
    configure_logging("info", "journal", journal_socket=str(tmp_path / "absent.sock"))
    try:
        structlog.get_logger("t").warning("fault", raised=["x"])
    finally:
        structlog.reset_defaults()
    out = capsys.readouterr().out.strip()
    assert out.startswith("<4>{")  # the priority prefix journald reads on a stdout stream
    line = json.loads(out[3:])
    assert line["event"] == "fault" and line["level"] == "warning"


def test_auto_uses_the_journal_when_systemd_connected_stdout_to_it(journal, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`auto` under systemd: JOURNAL_STREAM names stdout's device and inode, so records go to the journal socket
    (here the stand-in, through the configure_logging seam); without it they stay JSON lines on stdout."""
    path, sock = journal
    out = tmp_path / "stdout.txt"
    code = (f"import os, structlog\n"
            f"from neurostimd.service.logs import configure_logging\n"
            f"st = os.fstat(1); os.environ['JOURNAL_STREAM'] = f'{{st.st_dev}}:{{st.st_ino}}'\n"
            f"configure_logging('info', 'auto', journal_socket={path!r})\n"
            f"structlog.get_logger('t').warning('fault', raised=['x'])\n")
    with open(out, "w") as fh:
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=fh, check=True, timeout=60)
    rec = parse(sock.recv(65536))
    assert rec["EVENT"] == b"fault" and rec["PRIORITY"] == b"4"
    assert out.read_text() == ""
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    res = subprocess.run([sys.executable, "-c", code.replace("os.environ['JOURNAL_STREAM'] = ", "_ = ")], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=60, env=env)
    assert json.loads(res.stdout.strip())["event"] == "fault"
