"""The Markers stream, the signal outlet and the decisions outlet of a real closed loop (the in-process virtual
board), read back by real inlets on loopback: each marker carries its decision's timestamp, the signal is the
ring's samples on the same clock, and every outlet describes the session."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neurostimd.config import DecisionsLslConfig, MarkersLslConfig, SignalLslConfig
from neurostimd.core.markers import parse_marker
from neurostimd.core.units import uv_per_unit
from neurostimd.outputs.decisions_lsl import DecisionsListener, DecisionsOutlet
from neurostimd.outputs.lsl_meta import LslTime, StreamMeta, bundle_sha256, software_version
from neurostimd.outputs.markers_lsl import MarkersListener, MarkersOutlet
from neurostimd.outputs.signal_lsl import SignalListener, SignalOutlet
from tests.loop.collect import OnTick
from tests.loops import board_loop, virtual_config
from tests.outputs.lsl_inlets import description, drain, open_inlet


def _ids() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {k: f"test-{k}-{tag}" for k in ("decisions", "markers", "signal")}


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory, bundle: Any) -> dict[str, Any]:
    """A 6 s closed loop on the virtual board with all three outlets and an inlet on each; the board stops
    streaming for 1.5 s once stimulation has begun (a stale source; its FIFO overflows, so samples are lost), then
    streams again."""
    tmp_path = tmp_path_factory.mktemp("markers")
    cfg = virtual_config(tmp_path)
    ids = _ids()
    loop, drv, audit, clock = board_loop(cfg, bundle, tmp_path)
    lsl_time = LslTime(clock.now_ns)
    meta = StreamMeta(version=software_version(), bundle=str(bundle.path), bundle_sha256=bundle_sha256(bundle.path),
                      config="test.toml", source="board", device_id=drv.info().device_id, shadow=False)
    dec = DecisionsListener(DecisionsOutlet(DecisionsLslConfig(enabled=True, name=ids["decisions"],
                                                               source_id=ids["decisions"]),
                                            class_names=bundle.class_names, meta=meta), lsl_time)
    mk = MarkersListener(MarkersOutlet(MarkersLslConfig(enabled=True, name=ids["markers"], source_id=ids["markers"]),
                                       meta), bundle.class_names, lsl_time)
    sig = SignalListener(SignalOutlet(SignalLslConfig(enabled=True, name=ids["signal"], source_id=ids["signal"]),
                                      sample_rate_hz=loop.source.sample_rate_hz,
                                      channel_names=loop.source.channel_names, lsl_time=lsl_time, meta=meta,
                                      model="neurostimd board source"))
    inlets = {k: open_inlet(v) for k, v in ids.items()}
    stall: dict[str, int] = {}

    def stale_once(stats: Any) -> None:
        if "from" not in stall and loop.state.applied:
            stall["from"] = stats.index
            drv.board.stream_samples = False
        elif "from" in stall and "to" not in stall and stats.index >= stall["from"] + 30:
            stall["to"] = stats.index
            drv.board.stream_samples = True

    decisions: list[dict[str, Any]] = []
    for ls in (dec, mk, sig):
        loop.listeners.add(ls)
    loop.listeners.add(OnTick(stale_once))
    loop.listeners.add(_Records(decisions))
    try:
        loop.run(should_stop=lambda: False, duration_s=6.0)
        got = {k: drain(v) for k, v in inlets.items()}
        infos = {k: description(v) for k, v in inlets.items()}
        xml = {k: v.info(10.0).as_xml() for k, v in inlets.items()}
        ring = loop.ring.since(0)
    finally:
        for inlet in inlets.values():
            inlet.close_stream()
        for ls in (dec, mk, sig):
            ls.close()
        audit.close()
        drv.close()
    assert "to" in stall, "the loop stimulated and the stall happened"
    return {"got": got, "infos": infos, "xml": xml, "ring": ring, "lsl_time": lsl_time, "markers": mk,
            "decisions": decisions, "ids": ids, "bundle": bundle}


class _Records(OnTick):
    def __init__(self, out: list[dict[str, Any]]) -> None:
        super().__init__(lambda _s: None)
        self.out = out

    def on_decision(self, decision: Any) -> None:
        self.out.append({"record": decision.record, "t_ns": decision.t_ns})


def test_each_marker_carries_the_timestamp_of_its_decision(session: dict[str, Any]) -> None:
    """Every marker an inlet receives has a timestamp identical (==, no tolerance, no post-processing) to the
    timestamp of one decision sample; a decision's stamp is its tick time through the session's LslTime."""
    _, dec_ts = session["got"]["decisions"]
    mk_samples, mk_ts = session["got"]["markers"]
    assert len(dec_ts) == len(session["decisions"]), "every decision arrived"
    assert dec_ts == [session["lsl_time"].from_ns(d["t_ns"]) for d in session["decisions"]]
    assert mk_samples and all(ts in set(dec_ts) for ts in mk_ts)
    assert [s[0] for s in mk_samples] == [m for _, m in list(session["markers"].sent)[:len(mk_samples)]]


def test_markers_say_state_stimulation_and_faults_of_the_run(session: dict[str, Any]) -> None:
    """The run's markers, in order: the session starts; the first confirmed STOP; a state; stimulation on with its
    parameters, ramp steps as parameter changes; the stale source raises stale_data and the safe state, which
    stops stimulation; both clear again. Each marker parses."""
    markers = [s[0] for s in session["got"]["markers"][0]]
    tags = [":".join(parse_marker(m)[0]) for m in markers]
    assert tags[0] == "session:start"
    assert "stim:off" in tags and tags.index("stim:off") < tags.index("stim:on")
    on = parse_marker(markers[tags.index("stim:on")])[1]
    assert set(on) >= {"frequency_hz", "amplitude_ma", "pulse_width_us"} and float(on["amplitude_ma"]) > 0
    ramp = [parse_marker(m)[1] for m, t in zip(markers, tags, strict=True) if t == "stim:params"]
    assert ramp and any(p.get("limited_by") == "ramp" for p in ramp)
    assert any(t.startswith("state:") for t in tags)
    i_stale = tags.index("fault:raised:stale_data")
    assert i_stale < tags.index("fault:cleared:stale_data")
    assert "safe_state:on" in tags[i_stale:] and "stim:off" in tags[i_stale:]
    assert "safe_state:off" in tags[i_stale:]


def test_stimulation_markers_match_the_decision_that_applied_them(session: dict[str, Any]) -> None:
    """The stim:on marker's timestamp is the decision at which the loop first applied those parameters."""
    markers = session["got"]["markers"]
    [(on_marker, on_ts)] = [(m[0], ts) for m, ts in zip(*markers, strict=True) if m[0].startswith("stim:on")][:1]
    first = next(d for d in session["decisions"] if d["record"]["applied"])
    assert on_ts == session["lsl_time"].from_ns(first["t_ns"])
    assert float(parse_marker(on_marker)[1]["amplitude_ma"]) == pytest.approx(first["record"]["applied"]
                                                                              ["amplitude_ma"], abs=1e-5)


def test_the_signal_outlet_sends_the_rings_samples_on_the_same_clock(session: dict[str, Any]) -> None:
    """The signal inlet receives exactly the ring's samples (µV, float32) with the ring's timestamps mapped by the
    session's LslTime: the stall is a gap in the stamps, not filled."""
    samples, stamps = session["got"]["signal"]
    ring = session["ring"]
    assert len(samples) == len(ring)
    np.testing.assert_array_equal(np.asarray(samples, dtype=np.float32), ring.data)
    assert stamps == [session["lsl_time"].from_s(t) for t in ring.timestamps.tolist()]
    steps = np.diff(np.asarray(stamps))
    assert steps.max() > 0.3, "the stall's lost samples show as a gap in the signal's timestamps"


def _text(el: Any, path: str) -> str | None:
    found = el.find(path)
    return None if found is None else found.text


def test_every_outlet_describes_the_session(session: dict[str, Any]) -> None:
    """Each stream's full info carries the software version, the bundle's sha256 (of its manifest.json), the
    config, the device's identity and the acquisition block LabRecorder writes into the XDF header."""
    bundle = session["bundle"]
    manifest_sha = hashlib.sha256((Path(bundle.path) / "manifest.json").read_bytes()).hexdigest()
    for kind, info in session["infos"].items():
        assert _text(info, "source_id") == session["ids"][kind]
        assert _text(info, "desc/manufacturer") == "neurostimd"
        assert _text(info, "desc/acquisition/manufacturer") == "neurostimd"
        assert _text(info, "desc/acquisition/software_version") == software_version() != "unknown"
        assert _text(info, "desc/acquisition/serial_number") == "virtual-0"
        assert _text(info, "desc/neurostimd/bundle_sha256") == manifest_sha
        assert _text(info, "desc/neurostimd/bundle_hash_of") == "manifest.json"
        assert _text(info, "desc/neurostimd/config") == "test.toml"
        assert _text(info, "desc/neurostimd/shadow") == "false"
    markers = session["infos"]["markers"]
    assert (_text(markers, "type"), _text(markers, "channel_format"), _text(markers, "channel_count")) == (
        "Markers", "string", "1")
    assert float(_text(markers, "nominal_srate") or "nan") == 0.0


def test_the_signal_stream_declares_eeg_channels_in_microvolts(session: dict[str, Any]) -> None:
    """The signal stream: type EEG, the source's rate, one channel per ring channel with its label, unit
    "microvolts" (XDF's convention, read as µV by MNE-LSL's human units and by neurostimd's own LSL source) and
    type EEG."""
    info = session["infos"]["signal"]
    assert _text(info, "type") == "EEG" and float(_text(info, "nominal_srate") or 0) == 1000.0
    chans = info.findall("desc/channels/channel")
    assert len(chans) == session["ring"].data.shape[1]
    assert [_text(c, "label") for c in chans][:2] == ["ch0", "ch1"]
    for c in chans:
        assert _text(c, "unit") == "microvolts" and _text(c, "type") == "EEG"
        assert uv_per_unit(_text(c, "unit"), _text(c, "type")) == 1.0


def test_an_xdf_of_the_session_holds_signal_decisions_and_markers_on_one_clock(session: dict[str, Any],
                                                                              tmp_path: Path) -> None:
    """The three streams as LabRecorder would write them (headers as received, samples, footers; a small writer
    from the XDF spec) read back by pyxdf without clock post-processing: its streams are found by type, the markers
    are strings at their decisions' timestamps, the signal spans the decisions (within a tick), and the header
    fields pyxdf parses (acquisition, neurostimd block, channel units) are the outlets' own."""
    import pyxdf

    from tests.outputs.xdf_writer import XdfStream, write_xdf

    got = session["got"]
    path = tmp_path / "session.xdf"
    write_xdf(path, [XdfStream(session["xml"][k], got[k][0], got[k][1], string=k == "markers")
                     for k in ("signal", "decisions", "markers")])
    streams, _header = pyxdf.load_xdf(str(path), synchronize_clocks=False, dejitter_timestamps=False)
    by_type = {s["info"]["type"][0]: s for s in streams}
    assert set(by_type) == {"EEG", "Decisions", "Markers"}
    mk, dec, sig = by_type["Markers"], by_type["Decisions"], by_type["EEG"]
    assert [m[0] for m in mk["time_series"]] == [m[0] for m in got["markers"][0]]
    assert set(mk["time_stamps"].tolist()) <= set(dec["time_stamps"].tolist())
    cadence_s = 0.05
    assert abs(sig["time_stamps"][0] - dec["time_stamps"][0]) < cadence_s
    assert abs(sig["time_stamps"][-1] - dec["time_stamps"][-1]) < cadence_s
    np.testing.assert_array_equal(sig["time_series"], session["ring"].data)
    desc = sig["info"]["desc"][0]
    assert desc["acquisition"][0]["manufacturer"] == ["neurostimd"]
    assert desc["neurostimd"][0]["bundle_sha256"] == [bundle_sha256(session["bundle"].path)]
    units = {c["unit"][0] for c in desc["channels"][0]["channel"]}
    assert units == {"microvolts"}
    assert mk["info"]["desc"][0]["neurostimd"][0]["version"] == [software_version()]


def test_the_one_reader_reads_the_sessions_xdf(session: dict[str, Any], tmp_path: Path) -> None:
    """neurostimd's own reader takes the session's XDF as LabRecorder writes it: the signal outlet's stream (the
    one regularly sampled stream; the decisions stream has no rate and is not read) with the ring's samples in µV,
    the same chosen by type, and the markers as annotations at their offsets from the signal's first sample."""
    from neurostimd.sources.recordings import read_recording
    from tests.outputs.xdf_writer import XdfStream, write_xdf

    got = session["got"]
    path = tmp_path / "session.xdf"
    write_xdf(path, [XdfStream(session["xml"][k], got[k][0], got[k][1], string=k == "markers")
                     for k in ("signal", "decisions", "markers")])
    rec = read_recording(path)
    np.testing.assert_array_equal(rec.data, session["ring"].data)
    assert read_recording(path, stream_type="EEG").channel_names == rec.channel_names
    assert rec.units.startswith("declared") and rec.channel_names[:2] == ["ch0", "ch1"]
    sig_ts = np.asarray(got["signal"][1])
    t0, t_end = float(sig_ts[0]), float(sig_ts[-1]) + 1e-3
    expected = [(float(t) - t0, m[0]) for m, t in zip(got["markers"][0], got["markers"][1], strict=True)
                if t0 <= t < t_end]
    assert expected and [a.description for a in rec.annotations] == [e[1] for e in expected]
    np.testing.assert_allclose([a.onset_s for a in rec.annotations], [e[0] for e in expected], atol=1e-9)
