"""The daemon's LSL outputs in process (virtual board, real clock): the markers of its config reload path, the
same timestamps on markers and decisions when the loop's clock is LSL's, the shutdown markers, the signal outlet,
and the config rules for the outlets."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from neurostimd.config import Config, parse_config
from neurostimd.core.markers import parse_marker
from neurostimd.errors import ConfigError
from neurostimd.loop import ClosedLoop
from neurostimd.outputs.lsl_meta import LslTime
from neurostimd.service.daemon import EX_OK, Daemon
from neurostimd.service.notify import SystemdNotifier
from tests.outputs.lsl_inlets import drain, open_inlet
from tests.service.inprocess import virtual_config


def _with_outlets(cfg: Config) -> tuple[Config, dict[str, str]]:
    tag = uuid.uuid4().hex[:10]
    ids = {k: f"daemon-{k}-{tag}" for k in ("decisions", "markers", "signal")}
    upd = {f"{k}_lsl": getattr(cfg, f"{k}_lsl").model_copy(update={"enabled": True, "name": v, "source_id": v})
           for k, v in ids.items()}
    return cfg.model_copy(update=upd), ids


class _Reader(threading.Thread):
    """Opens inlets on the daemon's streams once they exist and pulls until told to stop."""

    def __init__(self, ids: dict[str, str]) -> None:
        super().__init__(name="test-lsl-reader")
        self.ids = ids
        self.connected = threading.Event()
        self.done = threading.Event()
        self.got: dict[str, tuple[list[Any], list[float]]] = {k: ([], []) for k in ids}
        self.error: BaseException | None = None

    def run(self) -> None:
        inlets: dict[str, Any] = {}
        try:
            inlets = {k: open_inlet(v, timeout_s=20.0) for k, v in self.ids.items()}
            self.connected.set()
            while not self.done.is_set():
                for k, inlet in inlets.items():
                    chunk, ts = inlet.pull_chunk(timeout=0.0, max_samples=100_000)
                    self.got[k][0].extend(chunk)
                    self.got[k][1].extend(ts)
                time.sleep(0.02)
            for k, inlet in inlets.items():
                chunk, ts = drain(inlet, quiet_s=0.3)
                self.got[k][0].extend(chunk)
                self.got[k][1].extend(ts)
        except BaseException as err:  # reported by the test
            self.error = err
            self.connected.set()
        finally:
            for inlet in inlets.values():
                inlet.close_stream()


def test_reloads_and_shutdown_are_markers_with_decision_timestamps(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A rejected and an accepted SIGHUP reload give config:reload_rejected and config:reloaded, each stamped with
    the timestamp of the next decision; on the daemon's real clock a decision's LSL timestamp is its tick time in
    seconds exactly (one clock); the exit adds the confirmed STOP and session:stop; the signal stream flows."""
    import tomli_w

    cfg, ids = _with_outlets(virtual_config(tmp_path))
    cfg_path = tmp_path / "neurostimd.toml"
    good = tomli_w.dumps(cfg.model_dump(mode="json", exclude_none=True))
    cfg_path.write_text(good)
    reader = _Reader(ids)
    reader.start()
    real_tick = ClosedLoop.tick
    box: list[Daemon] = []
    marks: dict[str, float] = {}
    tick_ns: list[int] = []

    def tick(self: ClosedLoop, deadline_ns: int | None = None) -> Any:
        stats = real_tick(self, deadline_ns)
        tick_ns.append(stats.start_ns)
        now = time.monotonic()
        if "bad" not in marks and reader.connected.is_set() and self.state.applied:
            cfg_path.write_text("[loop\ncadence_ms = ")  # not TOML: the reload is rejected
            box[0]._reload.set()  # what SIGHUP does
            marks["bad"] = now
            marks["config:reload_rejected"] = len(tick_ns) - 1
        elif "bad" in marks and "good" not in marks and now - marks["bad"] > 0.5:
            cfg_path.write_text(good)
            box[0]._reload.set()
            marks["good"] = now
            marks["config:reloaded"] = len(tick_ns) - 1
        elif "good" in marks and now - marks["good"] > 1.0:
            box[0].request_stop()
        return stats

    monkeypatch.setattr(ClosedLoop, "tick", tick)
    daemon = Daemon(cfg, str(cfg_path), notifier=SystemdNotifier({}))
    box.append(daemon)
    try:
        code = daemon.run(duration_s=30.0)
    finally:
        reader.done.set()
        reader.join(30.0)
    assert reader.error is None, reader.error
    assert code == EX_OK and "good" in marks
    lsl_time = daemon._lsl_time
    assert lsl_time is not None and lsl_time.same_clock and lsl_time.offset_s == 0.0
    markers, mk_ts = reader.got["markers"]
    _, dec_ts = reader.got["decisions"]
    assert dec_ts and set(dec_ts) <= {t / 1e9 for t in tick_ns}, "a decision is stamped with its tick's time"
    texts = [m[0] for m in markers]
    tags = [":".join(parse_marker(m)[0]) for m in texts]
    assert "config:reload_rejected" in tags and "config:reloaded" in tags
    assert tags.index("config:reload_rejected") < tags.index("config:reloaded")
    for name in ("config:reload_rejected", "config:reloaded"):
        ts = mk_ts[tags.index(name)]
        assert ts in set(dec_ts), f"{name} carries a decision's timestamp"
        # the reload runs between this tick and the next: its marker goes out with the next decision
        assert ts == tick_ns[int(marks[name]) + 1] / 1e9, f"{name} goes out with the first decision after it"
    assert all(ts in set(dec_ts) for m, ts in zip(texts, mk_ts, strict=True) if not m.endswith("shutdown")
               and m != "session:stop")
    sent = [m for _, m in daemon._markers.sent]  # type: ignore[union-attr]
    assert sent[-2:] == ["stim:off reason=shutdown", "session:stop"]
    assert parse_marker(sent[-2]) == (["stim", "off"], {"reason": "shutdown"})
    samples, sig_ts = reader.got["signal"]
    assert len(samples) > 1000 and len(samples[0]) == 32
    assert sig_ts == sorted(sig_ts) and abs(sig_ts[-1] - dec_ts[-1]) < 1.0, "the signal is on the decisions' clock"


def test_lsl_time_is_the_monotonic_clock_on_this_platform() -> None:
    """pylsl.local_clock() and time.monotonic() read one clock here (CLOCK_MONOTONIC on Linux): LslTime takes the
    offset as zero, so a loop time in ns becomes exactly t_ns / 1e9 LSL seconds; a virtual clock is shifted."""
    t = LslTime(time.monotonic_ns)
    assert t.same_clock and t.offset_s == 0.0 and t.from_ns(123_456_789_012) == 123.456789012
    virtual = LslTime(lambda: 5_000_000_000)
    assert not virtual.same_clock and virtual.from_ns(5_000_000_000) == pytest.approx(t.now(), abs=0.05)


def test_a_signal_outlet_for_an_lsl_source_is_refused() -> None:
    """[signal_lsl] enabled with an LSL source is a config error naming the fix (the stream is on the network
    already); two outlets with one source_id are refused too."""
    base = {"source": {"kind": "lsl", "name": "eeg", "n_channels": 32, "sample_rate_hz": 1000.0},
            "device": {"kind": "none"}}
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "signal_lsl": {"enabled": True}})
    assert "already on the network" in " ".join(err.value.errors) and "[signal_lsl] enabled = false" in " ".join(
        err.value.errors)
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "decisions_lsl": {"enabled": True, "source_id": "x"},
                      "markers_lsl": {"enabled": True, "source_id": "x"}})
    assert "markers_lsl.source_id = 'x' is also decisions_lsl.source_id" in " ".join(err.value.errors)
    ok = parse_config({**base, "markers_lsl": {"enabled": True}, "decisions_lsl": {"enabled": True}})
    assert ok.markers_lsl.name == "neurostimd-markers" and not ok.signal_lsl.enabled
