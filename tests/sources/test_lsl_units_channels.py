"""LSL source against real outlets on loopback: declared channel units are scaled to µV (MNE-LSL's player too),
missing or unknown units are refused at open unless the config states them, and `[source] channels` picks and
orders channels by label."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pylsl
import pytest

from neurostimd.core.ringbuffer import RingBuffer
from neurostimd.errors import SourceError
from neurostimd.sources.lsl import LslSource
from neurostimd.sources.settings import LslSourceConfig
from tests.sources.test_lsl_source import unique


def outlet(name: str, n: int, *, units: list[str] | None = None, labels: list[str] | None = None,
           fmt: str = "float32", rate: float = 100.0, types: list[str] | None = None) -> pylsl.StreamOutlet:
    info = pylsl.StreamInfo(name, "EEG", n, rate, fmt, name)
    if units is not None or labels is not None:
        chans = info.desc().append_child("channels")
        for i in range(n):
            ch = chans.append_child("channel")
            if labels is not None:
                ch.append_child_value("label", labels[i])
            if units is not None:
                ch.append_child_value("unit", units[i])
            if types is not None:
                ch.append_child_value("type", types[i])
    return pylsl.StreamOutlet(info)


def read_back(src: LslSource, out: pylsl.StreamOutlet, block: np.ndarray) -> np.ndarray:
    """Push `block` once the inlet is subscribed and return what reached the ring."""
    ring = RingBuffer(src.n_channels, 1000, src.sample_rate_hz)
    assert out.wait_for_consumers(5.0)
    time.sleep(0.2)
    out.push_chunk(block.tolist())
    deadline = time.monotonic() + 10.0
    while ring.total_written < len(block) and time.monotonic() < deadline:
        src.pump(ring, 0.05)
    assert ring.total_written == len(block)
    return ring.latest(len(block)).data


def cfg_for(name: str, n: int, **kw: object) -> LslSourceConfig:
    return LslSourceConfig(kind="lsl", source_id=name, n_channels=n, sample_rate_hz=100.0, resolve_timeout_s=5,
                           **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("unit", "factor"), [("V", 1e6), ("millivolts", 1e3), ("µV", 1.0), ("microvolts", 1.0)])
def test_declared_units_are_scaled_to_microvolts(unit: str, factor: float) -> None:
    """A stream in volts, millivolts or microvolts lands in the ring in µV."""
    name = unique("unit")
    out = outlet(name, 2, units=[unit, unit])
    uv = np.array([[10.0, -20.0], [30.5, 40.25]])
    with LslSource(cfg_for(name, 2)) as src:
        got = read_back(src, out, uv / factor)
    np.testing.assert_allclose(got, uv, rtol=1e-5)


def test_an_int16_stream_in_millivolts_is_scaled_too() -> None:
    """Integer formats are scaled like floats: int16 counts declared as mV become µV floats."""
    name = unique("int16")
    out = outlet(name, 2, units=["mV", "mV"], fmt="int16")
    with LslSource(cfg_for(name, 2)) as src:
        got = read_back(src, out, np.array([[1, -2], [300, -32768]], dtype=np.int16))
    np.testing.assert_array_equal(got, [[1000.0, -2000.0], [300000.0, -32768000.0]])


def test_a_stream_without_units_is_refused_at_open_unless_the_config_states_them() -> None:
    """No declared unit: open() refuses naming the fix; with units = "uV" the stream is read as µV."""
    name = unique("nounit")
    out = outlet(name, 2)
    with pytest.raises(SourceError, match=r"no unit declared.*\[source\] units"):
        LslSource(cfg_for(name, 2)).open()
    with LslSource(cfg_for(name, 2, units="uV")) as src:
        got = read_back(src, out, np.array([[1.5, 2.5]]))
    np.testing.assert_array_equal(got, [[1.5, 2.5]])


def test_an_unknown_unit_is_refused_and_a_contradiction_names_both() -> None:
    """A unit neurostimd does not know is refused; a declared unit that contradicts [source] units too."""
    name = unique("badunit")
    out = outlet(name, 1, units=["counts"])
    with pytest.raises(SourceError, match="unknown unit for channel 0: 'counts'"):
        LslSource(cfg_for(name, 1)).open()
    name2 = unique("clash")
    out2 = outlet(name2, 1, units=["V"])
    with pytest.raises(SourceError, match=r"contradicts \[source\] units = 'uV'.*declares 'V'"):
        LslSource(cfg_for(name2, 1, units="uV")).open()
    del out, out2


def test_mne_lsl_player_at_its_default_is_read_as_volts(tmp_path: Path) -> None:
    """MNE-LSL's PlayerLSL streams a recording in volts (unit "0" on eeg channels): the ring holds the µV values."""
    mne = pytest.importorskip("mne")
    from mne_lsl.player import PlayerLSL

    mne.set_log_level("ERROR")
    rng = np.random.default_rng(3)
    uv = rng.normal(0.0, 40.0, (2, 2000))
    raw = mne.io.RawArray(uv * 1e-6, mne.create_info(["Fz", "Cz"], 100.0, "eeg"))
    fif = tmp_path / "rec_raw.fif"
    raw.save(fif)
    name = unique("player")
    player = PlayerLSL(fif, chunk_size=10, name=name, source_id=name)
    player.start()
    try:
        cfg = LslSourceConfig(kind="lsl", source_id=name, n_channels=2, sample_rate_hz=100.0, resolve_timeout_s=10)
        ring = RingBuffer(2, 5000, 100.0)
        with LslSource(cfg) as src:
            assert src.declared_channel_names == ["Fz", "Cz"]
            deadline = time.monotonic() + 10.0
            while ring.total_written < 150 and time.monotonic() < deadline:
                src.pump(ring, 0.05)
        got = ring.latest(ring.total_written).data
    finally:
        player.stop()
    assert len(got) >= 150
    # the player starts at the recording's first sample; match the pulled stretch against it
    start = int(np.argmin(np.abs(uv[0] - got[0, 0])))
    np.testing.assert_allclose(got[:, 0], uv[0, start:start + len(got)], rtol=1e-4, atol=1e-3)
    assert 5.0 < float(np.std(got)) < 200.0  # µV, not V read as µV


def test_configured_channels_pick_and_order_by_label() -> None:
    """`channels = ["D", "b"]` delivers the stream's D and B columns, in that order (labels compare without case)."""
    name = unique("pick")
    out = outlet(name, 4, units=["uV"] * 4, labels=["A", "B", "C", "D"])
    with LslSource(cfg_for(name, 4, channels=["D", "b"])) as src:
        assert src.n_channels == 2 and src.declared_channel_names == ["D", "B"]
        got = read_back(src, out, np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]))
    np.testing.assert_array_equal(got, [[4.0, 2.0], [8.0, 6.0]])


def test_configured_channels_the_stream_lacks_or_cannot_name_are_refused() -> None:
    """A channel the stream does not carry, or a stream without labels, is refused at open naming the problem."""
    name = unique("lack")
    out = outlet(name, 2, units=["uV"] * 2, labels=["A", "B"])
    with pytest.raises(SourceError, match=r"missing: 'Z'.*its channels are \['A', 'B'\]"):
        LslSource(cfg_for(name, 2, channels=["A", "Z"])).open()
    name2 = unique("nolabel")
    out2 = outlet(name2, 2, units=["uV"] * 2)
    with pytest.raises(SourceError, match="does not label all its channels"):
        LslSource(cfg_for(name2, 2, channels=["A"])).open()
    with LslSource(cfg_for(name2, 2)) as src:
        assert src.declared_channel_names is None and src.channel_names == ["ch0", "ch1"]
    del out, out2
