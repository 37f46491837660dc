"""`neurostimd export`: sessions and recordings to FIF, EDF/BDF and BIDS through MNE and mne-bids, read back by
mne.io.read_raw / mne_bids.read_raw_bids, and replayed through the same pipeline."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import mne
import mne_bids
import numpy as np
import pytest

from neurostimd.clock import VirtualClock
from neurostimd.commands.cli import main
from neurostimd.commands.replay import replay_config, run_replay
from neurostimd.config import Config, load_config
from neurostimd.core.ringbuffer import Window
from neurostimd.firmware_sim.generate import generate_recording
from neurostimd.firmware_sim.inprocess import VirtualBoardDriver
from neurostimd.loop import ClosedLoop
from neurostimd.model.runtime import load_bundle
from neurostimd.outputs import mne_export as mx
from neurostimd.outputs.audit import AuditLog
from neurostimd.outputs.recorder import Recorder, RecorderListener
from neurostimd.service.exitcodes import EX_CONFIG, EX_DATAERR
from neurostimd.sources.recordings import Recording, read_jsonl, read_recording, to_npz
from neurostimd.sources.replay import ReplaySource

ROOT = Path(__file__).resolve().parents[2]
FS = 1000.0
GAP_AT = 15_000  # the input recording's timestamps jump before this sample...
GAP_S = 0.3  # ...by this much more than a period: 300 samples missing


# --- a real session: the replayed loop with the recorder ------------------------------------------------------------
def _replay_cfg(work: Path, recording: Path) -> Config:
    return replay_config(load_config(ROOT / "config" / "replay.toml"), recording, "max", work)


def record_session(recording: Path, session: Path, work: Path) -> None:
    """Run the daemon's loop over `recording` on a virtual clock, through the virtual board, recording the session
    with the real Recorder, as the daemon does with [recorder] enabled."""
    cfg = _replay_cfg(work, recording)
    clock = VirtualClock()
    source = ReplaySource(recording, 1.0, clock)
    driver = VirtualBoardDriver(n_channels=source.n_channels, sample_rate_hz=source.sample_rate_hz, clock=clock,
                                stream_samples=False)
    recorder = Recorder(session, source.n_channels, source.sample_rate_hz, source.channel_names,
                        extra_meta={"config": str(ROOT / "config" / "replay.toml"), "bundle": str(cfg.model.bundle)})
    listener = RecorderListener(recorder)
    with AuditLog(work / "audit.jsonl", durable=False) as audit:
        driver.open()
        source.open()
        try:
            loop = ClosedLoop(cfg, clock=clock, source=source, bundle=load_bundle(cfg.model.bundle), audit=audit,
                              driver=driver, listeners=[listener])
            loop.run(should_stop=lambda: False)
        finally:
            listener.close()
            source.close()
            driver.close()


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30 s session of the generator's signal (states that make the default bundle stimulate) with a 0.3 s gap in
    its timestamps at 15 s."""
    work = tmp_path_factory.mktemp("session")
    arrays = generate_recording(30.0, 32, FS, seed=4)
    ts = np.arange(arrays["data"].shape[0], dtype=np.float64) / FS
    ts[GAP_AT:] += GAP_S
    np.savez(work / "input.npz", timestamps=ts, **arrays)  # type: ignore[arg-type]
    record_session(work / "input.npz", work / "sess", work)
    return work / "sess"


def replay_decisions(recording: Path, out: Path) -> list[dict[str, Any]]:
    """decisions.jsonl of `neurostimd replay` (in process) over `recording` with config/replay.toml."""
    run_replay(_replay_cfg(out, recording), recording, out, progress=False, plot=False)
    return read_jsonl(out / "decisions.jsonl")


def recording_from_raw(raw: Any) -> Recording:
    """What MNE read back as a Recording in µV, the samples under BAD_ACQ_SKIP dropped and their time kept in the
    timestamps (so a replay sees the gap again)."""
    fs = float(raw.info["sfreq"])
    data = raw.get_data().T * 1e6
    keep = np.ones(data.shape[0], dtype=bool)
    for a in raw.annotations:
        if a["description"] == mx.GAP_DESCRIPTION:
            start = round(a["onset"] * fs)
            keep[start:start + round(a["duration"] * fs)] = False
    idx = np.flatnonzero(keep)
    return Recording(data[idx].astype(np.float32), fs, list(raw.ch_names),
                     timestamps=None if keep.all() else idx / fs)


def _export(*args: str) -> int:
    return main(["export", *args])


def _annotations(raw: Any) -> list[tuple[float, float, str]]:
    return [(float(a["onset"]), float(a["duration"]), str(a["description"])) for a in raw.annotations]


def _expected(session: Path) -> dict[str, Any]:
    """What the session's files say the annotations must show."""
    meta = json.loads((session / "session.json").read_text())
    cmds = read_jsonl(session / "commands.jsonl")
    decs = read_jsonl(session / "decisions.jsonl")
    return {"meta": meta, "commands": cmds, "decisions": decs, "samples": read_recording(session).data}


# --- round trips ------------------------------------------------------------------------------------------------------
def test_fif_round_trip_keeps_samples_annotations_and_decisions(session: Path, tmp_path: Path) -> None:
    """Session → FIF → mne.io.read_raw: eeg channels in volts, samples exact, zeros under a BAD_ACQ_SKIP at the gap,
    state/stim/fault annotations where the session's files put them; replaying the read-back signal gives the same
    decisions as replaying the session."""
    out = tmp_path / "sess_raw.fif"
    assert _export(str(session), "--to", "fif", str(out), "--line-freq", "50") == 0
    raw = mne.io.read_raw(out, preload=True, verbose="error")
    exp = _expected(session)
    assert set(raw.get_channel_types()) == {"eeg"}
    assert all(ch["unit"] == mne.io.constants.FIFF.FIFF_UNIT_V for ch in raw.info["chs"])
    assert raw.info["line_freq"] == 50.0
    assert raw.info["meas_date"].isoformat() == exp["meta"]["started_wall"]
    n_rec = exp["samples"].shape[0]
    missing = round(GAP_S * FS)  # the step is 0.301 s: 300 samples missing
    assert raw.n_times == n_rec + missing
    back = (raw.get_data().T * 1e6).astype(np.float32)
    assert np.array_equal(back[:GAP_AT], exp["samples"][:GAP_AT])
    assert np.array_equal(back[GAP_AT + missing:], exp["samples"][GAP_AT:])
    assert not back[GAP_AT:GAP_AT + missing].any()
    ann = _annotations(raw)
    gaps = [a for a in ann if a[2] == mx.GAP_DESCRIPTION]
    assert len(gaps) == 1 and gaps[0][0] == pytest.approx(GAP_AT / FS, abs=1e-4)
    assert gaps[0][1] == pytest.approx(missing / FS, abs=1e-4)
    # every acknowledged command that applied parameters is an episode at its data time, with its parameters
    applied = [c for c in exp["commands"] if c["ack"] is True and c["applied"] is not None]
    assert applied, "the session stimulated"
    stims = [a for a in ann if mx.parse_stim_description(a[2]) is not None]
    assert len(stims) == len(applied)
    # each episode lasts until the next acknowledged command, in data time: 0 s when that command went out at a tick
    # with no new samples (the data clock stood still, e.g. a ramp step just before the gap)
    acked = [c for c in exp["commands"] if c["ack"] is True]
    ends = {id(c): nxt["t_data_s"] for c, nxt in itertools.pairwise(acked)}
    for c, a in zip(applied, stims, strict=True):
        assert a[0] == pytest.approx(c["t_data_s"], abs=1e-4)
        assert mx.parse_stim_description(a[2]) == pytest.approx(c["applied"])
        if id(c) in ends:
            assert a[0] + a[1] == pytest.approx(ends[id(c)], abs=1e-4)
        assert a[1] >= 0
    states = [a for a in ann if a[2].startswith(mx.STATE_PREFIX)]
    assert {a[2] for a in states} <= {f"state:{n}" for n in ("quiet", "activated", "pathological")}
    changes = [d for prev, d in zip(exp["decisions"], exp["decisions"][1:], strict=False)
               if d["state"] != prev["state"] and d["state"] is not None]
    assert len(states) == len(changes) + (exp["decisions"][0]["state"] is not None)
    faults = {a[2] for a in ann if a[2].startswith(mx.FAULT_PREFIX)}
    assert faults == {f"fault:{c}" for d in exp["decisions"] for c in d["faults"]} and faults
    # the replay of what MNE read back decides exactly as the replay of the session
    npz = to_npz(recording_from_raw(raw), tmp_path / "readback.npz")
    assert replay_decisions(npz, tmp_path / "r_back") == replay_decisions(session, tmp_path / "r_sess")


def test_edf_round_trip_is_within_its_resolution_and_decisions_mostly_agree(session: Path, tmp_path: Path) -> None:
    """Session → EDF+ → mne.io.read_raw: the annotations survive (to EDF+'s onset precision), every sample is within
    half a digital step of its channel's range, and the replayed decisions of the 16-bit signal agree with the
    session's replay on at least 95 % of ticks (the share that differs is printed)."""
    out = tmp_path / "sess.edf"
    assert _export(str(session), "--to", "edf", str(out)) == 0
    raw = mne.io.read_raw(out, preload=True, verbose="error")
    fif_ann = mx.load_export_input(session).annotations
    ann = [a for a in _annotations(raw) if not (a[2] == mx.GAP_DESCRIPTION and a[0] >= raw.n_times / FS - 1.0)]
    # (MNE pads the last EDF data record with a BAD_ACQ_SKIP of its own: above, dropped)
    assert sorted((round(a[0], 3), a[2]) for a in ann) == sorted((round(a.onset_s, 3), a.description)
                                                                  for a in fif_ann)
    assert set(raw.get_channel_types()) == {"eeg"}
    assert set(raw._orig_units.values()) == {"µV"}
    exp = mx.load_export_input(session).data
    back = raw.get_data().T[: exp.shape[0]] * 1e6
    span = exp.max(axis=0).astype(np.float64) - exp.min(axis=0)
    step = span / 65534.0
    assert (np.abs(back - exp) <= step / 2 + 1e-6 * span).all()
    a = replay_decisions(to_npz(recording_from_raw(raw), tmp_path / "edf.npz"), tmp_path / "r_edf")
    b = replay_decisions(session, tmp_path / "r_sess")
    assert len(a) == len(b)
    same_state = np.mean([x["state"] == y["state"] for x, y in zip(a, b, strict=True)])
    same_applied = np.mean([x["applied"] == y["applied"] for x, y in zip(a, b, strict=True)])
    print(f"EDF read-back vs session: {len(a)} decisions, same state {same_state:.4f}, same applied "
          f"{same_applied:.4f}, identical records {np.mean([x == y for x, y in zip(a, b, strict=True)]):.4f}")
    assert same_state >= 0.95 and same_applied >= 0.95


def test_bids_round_trip_reads_back_with_mne_bids(session: Path, tmp_path: Path) -> None:
    """Session → BIDS (EDF inside) → mne_bids.read_raw_bids: the stimulation episodes and states are annotations
    (from events.tsv), channels are EEG in µV in channels.tsv, the sidecar names the software and the bundle's
    hash, and the read-back signal replays to decisions that agree with the session's."""
    root = tmp_path / "bids"
    assert _export(str(session), "--to", "bids", str(root), "--subject", "07", "--task", "rest",
                   "--line-freq", "60") == 0
    path = mne_bids.BIDSPath(subject="07", task="rest", datatype="eeg", root=root)
    raw = mne_bids.read_raw_bids(path, verbose="error")
    raw.load_data()
    descs = [a[2] for a in _annotations(raw)]
    assert any(mx.parse_stim_description(d) for d in descs)
    assert any(d.startswith("state:") for d in descs) and any(d.startswith("fault:") for d in descs)
    assert raw.info["line_freq"] == 60.0
    chans = (root / "sub-07" / "eeg" / "sub-07_task-rest_channels.tsv").read_text().splitlines()
    assert all(line.split("\t")[1:3] == ["EEG", "µV"] for line in chans[1:])
    sidecar = json.loads((root / "sub-07" / "eeg" / "sub-07_task-rest_eeg.json").read_text())
    assert sidecar["SoftwareVersions"].startswith("neurostimd ")
    assert sidecar["NeurostimdBundleSha256"] == mx.sha256_file(ROOT / "models" / "default" / "manifest.json")
    events = (root / "sub-07" / "eeg" / "sub-07_task-rest_events.tsv").read_text()
    assert "stim f=" in events and "BAD_ACQ_SKIP" in events
    a = replay_decisions(to_npz(recording_from_raw(raw), tmp_path / "bids.npz"), tmp_path / "r_bids")
    b = replay_decisions(session, tmp_path / "r_sess")
    assert np.mean([x["state"] == y["state"] for x, y in zip(a, b, strict=True)]) >= 0.95
    # a second export of the same recording into the root is refused without --force, done with it
    assert _export(str(session), "--to", "bids", str(root), "--subject", "07", "--task", "rest",
                   "--line-freq", "60") == EX_CONFIG
    assert _export(str(session), "--to", "bids", str(root), "--subject", "07", "--task", "rest",
                   "--line-freq", "60", "--force") == 0


@pytest.fixture(scope="module")
def session_replay(session: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The decisions of replaying the session itself: what every exported file must replay to."""
    return replay_decisions(session, tmp_path_factory.mktemp("r_session"))


def _gap_ticks(decisions: list[dict[str, Any]]) -> list[float]:
    return [d["t_data_s"] for d in decisions if "quality_gap" in d["faults"]]


@pytest.mark.parametrize("to", ["fif", "edf", "bdf", "bids", "bids-brainvision"])
def test_the_exported_file_itself_replays_the_gap_and_the_decisions(to: str, session: Path, tmp_path: Path,
                                                                    session_replay: list[dict[str, Any]]) -> None:
    """`neurostimd replay` of the exported file itself (the one reader, no test-side handling of BAD_ACQ_SKIP)
    faults quality_gap on exactly the ticks the session's replay does, and ends where the session ends (MNE's
    padding of the last EDF record is not signal): a FIF decides exactly as the session, an EDF/BDF (16/24 bit)
    with the same state and applied parameters on at least 95 % of ticks (no sample sits on the physical range's
    rails, which the reader would take for saturation, and each sample is within half a step of the range its header
    states)."""
    if to.startswith("bids"):
        fmt = ["--bids-format", "brainvision"] if to == "bids-brainvision" else []
        assert _export(str(session), "--to", "bids", str(tmp_path / "bids"), "--subject", "07", "--task", "rest",
                       "--line-freq", "50", *fmt) == 0
        out = tmp_path / "bids" / "sub-07" / "eeg" / f"sub-07_task-rest_eeg.{'vhdr' if fmt else 'edf'}"
    else:
        out = tmp_path / ("sess_raw.fif" if to == "fif" else f"sess.{to}")
        assert _export(str(session), "--to", to, str(out)) == 0
    got = replay_decisions(out, tmp_path / "r_out")
    gaps = _gap_ticks(session_replay)
    assert gaps and all(GAP_AT / FS <= t < GAP_AT / FS + GAP_S + 1.0 for t in gaps)  # the control: the gap faults
    assert _gap_ticks(got) == gaps
    assert len(got) == len(session_replay)
    if to == "fif":  # float64 volts: the same samples, the same decisions
        assert got == session_replay
        return
    if to in ("edf", "bdf"):  # each channel's physical range reaches just beyond its samples: none is on the rails
        import edfio

        exp = mx.load_export_input(session).data.astype(np.float64)
        signals: list[Any] = list((edfio.read_bdf(out) if to == "bdf" else edfio.read_edf(out)).signals)
        lo, hi = np.array([s.physical_min for s in signals]), np.array([s.physical_max for s in signals])
        span = exp.max(axis=0) - exp.min(axis=0)
        assert (lo < exp.min(axis=0)).all() and (hi > exp.max(axis=0)).all()
        assert np.allclose(hi - lo, span * (1 + 2 * mx.RANGE_MARGIN), rtol=1e-4)
        for k, sig in enumerate(signals):  # scaled by the range the header states: within half its digital step
            half_step = 0.5 * (sig.physical_max - sig.physical_min) / (sig.digital_max - sig.digital_min)
            assert np.abs(sig.data[: exp.shape[0]] - exp[:, k]).max() <= half_step * (1 + 1e-6)
    pairs = list(zip(got, session_replay, strict=True))
    same_state = np.mean([x["state"] == y["state"] for x, y in pairs])
    same_applied = np.mean([x["applied"] == y["applied"] for x, y in pairs])
    print(f"{to} replayed vs session: {len(got)} decisions, same state {same_state:.4f}, same applied "
          f"{same_applied:.4f}")
    assert same_state >= 0.95 and same_applied >= 0.95


# --- hand-made sessions (the real Recorder) ---------------------------------------------------------------------------
def make_session(folder: Path, data: np.ndarray, timestamps: np.ndarray, *, indices: np.ndarray | None = None,
                 decisions: list[dict[str, Any]] = (), commands: list[dict[str, Any]] = (),  # type: ignore[assignment]
                 names: list[str] | None = None, fs: float = 100.0, bundle: str | None = None) -> Path:
    """A session written by the real Recorder from the given samples, decisions and commands."""
    rec = Recorder(folder, data.shape[1], fs, names, extra_meta={"bundle": bundle} if bundle else None)
    idx = np.arange(data.shape[0], dtype=np.int64) if indices is None else indices
    rec.record_samples(Window(data.astype(np.float32), idx, timestamps.astype(np.float64),
                              np.zeros(data.shape[0], dtype=np.uint8)))
    for d in decisions:
        rec.record_decision(d)
    for c in commands:
        rec.record_command(c)
    rec.close()
    return folder


def _dec(t: float | None, state: int | None, faults: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"tick": 0, "t_s": t or 0.0, "t_data_s": t, "state": state, "faults": list(faults)}


def _cmd(t: float, applied: dict[str, float] | None, ack: bool = True) -> dict[str, Any]:
    return {"event": "stim_command" if applied else "stim_stop", "t_data_s": t, "applied": applied, "ack": ack}


P130 = {"frequency_hz": 130.0, "amplitude_ma": 2.0, "pulse_width_us": 60.0}
P90 = {"frequency_hz": 90.0, "amplitude_ma": 1.5, "pulse_width_us": 90.0}


def test_annotations_span_states_faults_and_episodes(tmp_path: Path) -> None:
    """State and fault spans run from the decision that starts them to the one that ends them (or the session's
    end), episodes from each acknowledged command to the next, an unacknowledged command is a zero-length marker,
    and the state names come from the bundle the session names."""
    data = np.random.default_rng(0).normal(size=(1000, 2)) * 10
    decs = [_dec(None, None, ("startup",)), _dec(0.5, 0), _dec(1.0, 0), _dec(2.0, 1, ("low_confidence",)),
            _dec(3.0, 1), _dec(6.0, 2)]
    cmds = [_cmd(2.0, P130), _cmd(3.0, P90, ack=False), _cmd(4.0, P90), _cmd(5.0, None)]
    s = make_session(tmp_path / "s", data, np.arange(1000) / 100.0, decisions=decs, commands=cmds,
                     bundle=str(ROOT / "models" / "default"))
    got = {(round(a.onset_s, 6), round(a.duration_s, 6), a.description) for a in mx.load_export_input(s).annotations}
    assert got == {
        (0.0, 0.5, "fault:startup"), (0.5, 1.5, "state:quiet"), (2.0, 4.0, "state:activated"),
        (6.0, 4.0, "state:pathological"), (2.0, 1.0, "fault:low_confidence"),
        (2.0, 2.0, "stim f=130Hz a=2mA pw=60us"), (3.0, 0.0, "stim_unacknowledged"),
        (4.0, 1.0, "stim f=90Hz a=1.5mA pw=90us"),
    }


def test_states_are_numbered_without_the_bundle(tmp_path: Path) -> None:
    """A session whose bundle cannot be found exports its states by number; --bundle names them."""
    s = make_session(tmp_path / "s", np.zeros((300, 1)), np.arange(300) / 100.0,
                     decisions=[_dec(0.1, 1)], bundle=str(tmp_path / "gone"))
    assert [a.description for a in mx.load_export_input(s).annotations] == ["state:1"]
    named = mx.load_export_input(s, bundle=ROOT / "models" / "default").annotations
    assert [a.description for a in named] == ["state:activated"]


def test_timestamp_and_index_gaps_become_zeros_under_bad_acq_skip(tmp_path: Path) -> None:
    """A timestamp jump and a ring-index jump each become a BAD_ACQ_SKIP over the missing samples, filled with
    zeros; the samples around them keep their place, and jitter within --timestamp-jitter-ms is not a gap."""
    n = 600
    data = np.arange(1, n + 1, dtype=np.float32)[:, None]
    ts = np.arange(n) / 100.0
    ts[200:] += 0.05  # 5 samples missing in time
    idx = np.arange(n, dtype=np.int64)
    idx[400:] += 7  # the recorder skipped 7 (their stamps are skipped too)
    ts[400:] += 0.07
    inp = mx.load_export_input(make_session(tmp_path / "s", data, ts, indices=idx))
    gaps = [(round(a.onset_s, 6), round(a.duration_s, 6)) for a in inp.annotations
            if a.description == mx.GAP_DESCRIPTION]
    assert gaps == [(2.0, 0.05), (4.05, 0.07)]
    assert inp.gap_samples == 12 and inp.data.shape == (612, 1)
    assert np.array_equal(inp.data[:200, 0], data[:200, 0]) and not inp.data[200:205].any()
    assert inp.data[205, 0] == 201 and inp.data[405:412].sum() == 0 and inp.data[-1, 0] == n
    jitter = np.arange(n) / 100.0
    jitter[300:] += 0.008  # a step of 1.8 periods
    s2 = make_session(tmp_path / "s2", data, jitter)
    assert mx.load_export_input(s2).gap_samples == 1
    assert mx.load_export_input(s2, timestamp_jitter_ms=5.0).gap_samples == 0


def test_an_exported_edf_with_a_gap_exports_again_with_the_gap(tmp_path: Path) -> None:
    """A session with a gap → EDF → FIF: the EDF's BAD_ACQ_SKIP is read as a gap and written back as one, at the
    same place and length, and the EDF's padding of its last record is not carried over."""
    n = 650
    data = np.arange(1, n + 1, dtype=np.float64)[:, None] * 0.1
    ts = np.arange(n) / 100.0
    ts[200:] += 0.05  # 5 samples missing
    s = make_session(tmp_path / "s", data, ts)
    assert _export(str(s), "--to", "edf", str(tmp_path / "s.edf")) == 0
    assert _export(str(tmp_path / "s.edf"), "--to", "fif", str(tmp_path / "again_raw.fif")) == 0
    raw = mne.io.read_raw(tmp_path / "again_raw.fif", verbose="error")
    assert raw.n_times == n + 5
    assert [(round(o, 6), round(d, 6), t) for o, d, t in _annotations(raw)] == [(2.0, 0.05, mx.GAP_DESCRIPTION)]


def test_a_board_counter_that_did_not_start_at_zero_is_realigned(tmp_path: Path) -> None:
    """Decisions whose data time runs past the session's end (a board's counter) are aligned so that the last
    decision falls on the last sample."""
    decs = [_dec(100.0 + t, 0) for t in (0.0, 1.0)] + [_dec(103.99, 1)]
    s = make_session(tmp_path / "s", np.zeros((400, 1)), np.arange(400) / 100.0, decisions=decs)
    got = [(round(a.onset_s, 6), a.description) for a in mx.load_export_input(s).annotations]
    assert got == [(0.0, "state:0"), (3.99, "state:1")]


def test_recording_labels_become_one_annotation_per_run(tmp_path: Path) -> None:
    """An .npz with labels exports to EDF+ with one annotation per run of equal labels, named by its class, which
    mne.io.read_raw reads back; in a FIF, channels named like 10-05 positions carry those positions."""
    labels = np.repeat([0, 1, 0, 2], [150, 100, 250, 100]).astype(np.int64)
    data = np.random.default_rng(1).normal(size=(600, 3)).astype(np.float32) * 20
    src = tmp_path / "rec.npz"
    np.savez(src, data=data, fs=np.float64(100.0), channel_names=np.array(["Fz", "Cz", "Pz"]), labels=labels,
             class_names=np.array(["open", "closed", "blink"]))
    out = tmp_path / "rec.edf"
    assert _export(str(src), "--to", "edf", str(out)) == 0
    raw = mne.io.read_raw(out, verbose="error")
    assert [(round(o, 3), round(d, 3), t) for o, d, t in _annotations(raw)] == [
        (0.0, 1.5, "open"), (1.5, 1.0, "closed"), (2.5, 2.5, "open"), (5.0, 1.0, "blink")]
    assert _export(str(src), "--to", "fif", str(tmp_path / "rec_raw.fif")) == 0
    montage = mne.io.read_raw(tmp_path / "rec_raw.fif", verbose="error").get_montage()
    assert montage is not None and set(montage.get_positions()["ch_pos"]) == {"Fz", "Cz", "Pz"}


def test_eye_state_arff_exports_to_edf_with_its_labels(shared_data: Path, tmp_path: Path) -> None:
    """The UCI EEG Eye State ARFF (--fs 128) becomes an EDF+ whose annotations are its eye-state runs."""
    out = tmp_path / "eye.edf"
    arff = shared_data / "eeg_eye_state" / "EEG_Eye_State.arff"
    assert _export(str(arff), "--fs", "128", "--to", "edf", str(out)) == 0
    raw = mne.io.read_raw(out, verbose="error")
    rec = read_recording(arff, fs=128)
    assert rec.labels is not None
    runs = 1 + int(np.count_nonzero(np.diff(rec.labels)))
    descs = [a["description"] for a in raw.annotations]
    assert len(descs) == runs + 1 and descs[-1] == mx.GAP_DESCRIPTION  # MNE's padding of the last data record
    assert set(descs[:-1]) == set(rec.class_names or [])
    assert raw.ch_names == rec.channel_names and raw.info["sfreq"] == 128.0


# --- bad input --------------------------------------------------------------------------------------------------------
def test_bad_input_is_refused_with_the_right_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a session, an empty session, an unknown file type: 65 naming the path; an OUT that exists (without
    --force), that is the session or lies in it, a wrong suffix, BIDS without --line-freq: 78; an unknown --to: 2."""
    (tmp_path / "nosession").mkdir()
    assert _export(str(tmp_path / "nosession"), "--to", "fif", str(tmp_path / "a_raw.fif")) == EX_DATAERR
    assert "no session.json" in capsys.readouterr().err
    Recorder(tmp_path / "empty", 2, 100.0).close()
    assert _export(str(tmp_path / "empty"), "--to", "fif", str(tmp_path / "a_raw.fif")) == EX_DATAERR
    assert "no complete sample" in capsys.readouterr().err
    (tmp_path / "x.abc").write_bytes(b"\0" * 16)
    assert _export(str(tmp_path / "x.abc"), "--to", "edf", str(tmp_path / "x.edf")) == EX_DATAERR
    assert "unknown recording type" in capsys.readouterr().err
    s = make_session(tmp_path / "s", np.ones((200, 2)), np.arange(200) / 100.0)
    before = {p.name: p.read_bytes() for p in s.iterdir()}
    for out in (s, s / "inside_raw.fif"):
        assert _export(str(s), "--to", "fif", str(out), "--force") == EX_CONFIG
        assert "the recording being exported" in capsys.readouterr().err
    assert _export(str(s), "--to", "edf", str(tmp_path / "wrong.fif")) == EX_CONFIG
    assert "must end in .edf" in capsys.readouterr().err
    assert _export(str(s), "--to", "bids", str(tmp_path / "bids")) == EX_CONFIG
    assert "--line-freq" in capsys.readouterr().err
    (tmp_path / "notbids").mkdir()
    (tmp_path / "notbids" / "keep.txt").write_text("mine")
    assert _export(str(s), "--to", "bids", str(tmp_path / "notbids"), "--line-freq", "50") == EX_CONFIG
    assert "not a BIDS root" in capsys.readouterr().err
    out = tmp_path / "s_raw.fif"
    out.write_bytes(b"old")
    assert _export(str(s), "--to", "fif", str(out)) == EX_CONFIG
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"old"
    assert _export(str(s), "--to", "fif", str(out), "--force") == 0
    assert mne.io.read_raw(out, verbose="error").n_times == 200
    assert {p.name: p.read_bytes() for p in s.iterdir()} == before, "the session is untouched"
    edf = tmp_path / "s.edf"
    assert _export(str(s), "--to", "edf", str(edf)) == 0
    written = edf.read_bytes()
    assert _export(str(edf), "--to", "edf", str(edf), "--force") == EX_CONFIG
    assert "the recording being exported" in capsys.readouterr().err and edf.read_bytes() == written
    with pytest.raises(SystemExit) as exc:
        _export(str(s), "--to", "gdf", str(tmp_path / "x.gdf"))
    assert exc.value.code == 2


def test_long_channel_names_are_refused_for_edf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """EDF labels hold 16 characters: a longer channel name is refused naming it (FIF takes it)."""
    s = make_session(tmp_path / "s", np.ones((200, 1)), np.arange(200) / 100.0, names=["a_very_long_channel_name"])
    assert _export(str(s), "--to", "edf", str(tmp_path / "s.edf")) == EX_DATAERR
    assert "a_very_long_channel_name" in capsys.readouterr().err
    assert _export(str(s), "--to", "fif", str(tmp_path / "s_raw.fif")) == 0


def test_missing_mne_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Without MNE installed (hidden from the import system: it cannot be uninstalled for a test), export exits 78
    saying which extra to install, and writes nothing."""
    s = make_session(tmp_path / "s", np.ones((200, 1)), np.arange(200) / 100.0)
    monkeypatch.setitem(sys.modules, "mne", None)
    assert _export(str(s), "--to", "fif", str(tmp_path / "s_raw.fif")) == EX_CONFIG
    assert "pip install 'neurostimd[lab]'" in capsys.readouterr().err
    assert not (tmp_path / "s_raw.fif").exists()


def test_export_modules_import_no_mne() -> None:
    """The CLI and the export modules import MNE and mne-bids only when exporting."""
    code = ("import sys, neurostimd.commands.cli, neurostimd.commands.export, neurostimd.outputs.mne_export; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mne', 'mne_bids', 'edfio')))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
