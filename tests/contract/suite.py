"""The driver contract, written once: every backend (virtual board, neurostimd-sim over a pty, real hardware, a
driver without a sample stream) runs this suite by subclassing DriverContract, providing `make_driver` and declaring
its driver's CAPABILITIES. Tests of a capability a backend lacks are skipped."""

from __future__ import annotations

import contextlib
import itertools
import time
from typing import ClassVar

import numpy as np
import pytest

from neurostimd.drivers.base import CAPABILITIES, Driver
from neurostimd.drivers.errors import BoardLost, DriverError
from neurostimd.drivers.types import SampleBlock, StimParams

SAFE = StimParams(frequency_hz=50.0, amplitude_ma=2.0, pulse_width_us=200.0, interphase_gap_us=50.0)


class DriverContract:
    """Behaviour every Driver must show. Subclasses define make_driver() returning an unopened driver, and
    CAPABILITIES: what that driver supports (checked against its own declaration)."""

    CAPABILITIES: ClassVar[frozenset[str] | None] = None

    def make_driver(self) -> Driver:
        raise NotImplementedError  # abstract hook of the test base class, filled in per backend

    def expected_protocol_version(self, driver: Driver) -> int | None:
        """The protocol version the board must report: the one the driver speaks unless the backend knows better."""
        return type(driver).protocol_version

    def _require(self, capability: str) -> None:
        assert self.CAPABILITIES is not None, f"{type(self).__name__} does not declare CAPABILITIES"
        if capability not in self.CAPABILITIES:
            pytest.skip(f"{type(self).__name__}'s driver has no {capability!r} capability")

    @pytest.fixture
    def driver(self):  # type: ignore[no-untyped-def]
        d = self.make_driver()
        d.open()
        try:
            yield d
        finally:
            if d.is_open:
                # the test may have left the board unreachable on purpose
                with contextlib.suppress(DriverError):
                    d.stop()
            d.close()

    def test_declares_its_capabilities(self, driver: Driver) -> None:
        """The backend's CAPABILITIES are the driver's own declaration, in names the Driver ABC knows."""
        assert self.CAPABILITIES is not None, f"{type(self).__name__} must declare CAPABILITIES (its driver's)"
        assert frozenset(type(driver).capabilities) == self.CAPABILITIES
        assert self.CAPABILITIES <= CAPABILITIES

    def test_handshake_reports_info_and_limits(self, driver: Driver) -> None:
        """open() handshakes and info() returns the board's identity, its protocol version (the one the driver
        speaks), stream settings (for a driver that streams; none otherwise) and hard limits."""
        info = driver.info()
        expected = self.expected_protocol_version(driver)
        assert isinstance(info.protocol_version, int)
        if expected is not None:
            assert info.protocol_version == expected
        assert info.device_id and info.firmware_version
        if "samples" in type(driver).capabilities:
            assert info.n_channels > 0 and info.sample_rate_hz > 0
            assert info.sample_format in ("int16", "float32") and info.uv_per_lsb > 0
        else:
            assert info.n_channels == 0
        lim = info.limits
        assert 0 < lim.min_frequency_hz < lim.max_frequency_hz
        assert lim.max_amplitude_ma > 0 and 0 < lim.min_pulse_width_us < lim.max_pulse_width_us
        assert lim.max_charge_per_phase_uc > 0 and lim.watchdog_ms > 0

    def test_streams_blocks_with_consecutive_counters(self, driver: Driver) -> None:
        """read_samples returns float32 µV blocks of the board's width whose sample counters follow each other."""
        self._require("samples")
        n_ch = driver.info().n_channels
        blocks = []
        deadline = time.monotonic() + 10.0
        while len(blocks) < 10 and time.monotonic() < deadline:
            blocks += driver.read_samples(timeout_s=0.2)
        assert len(blocks) >= 10
        for b in blocks:
            assert b.data.dtype == np.float32 and b.data.ndim == 2 and b.data.shape[1] == n_ch
            assert np.all(np.isfinite(b.data))
        for prev, nxt in itertools.pairwise(blocks):
            assert nxt.first_index == prev.first_index + len(prev.data)
            assert nxt.t_recv_ns >= prev.t_recv_ns
        assert driver.counters.sample_gaps == 0

    def test_service_between_reads_loses_no_block(self, driver: Driver) -> None:
        """A reader that calls service() once per tick besides read_samples(), as the loop does, still gets every
        block, in order."""
        self._require("samples")
        blocks: list[SampleBlock] = []
        deadline = time.monotonic() + 10.0
        while len(blocks) < 20 and time.monotonic() < deadline:
            blocks += driver.read_samples(0.0)
            driver.service(time.monotonic_ns())
            time.sleep(0.02)
        assert len(blocks) >= 20
        for prev, nxt in itertools.pairwise(blocks):
            assert nxt.first_index == prev.first_index + len(prev.data)
        assert driver.counters.sample_gaps == 0

    def test_read_samples_without_the_capability_names_it(self, driver: Driver) -> None:
        """A driver that streams nothing refuses read_samples with a DriverError naming the missing capability."""
        assert self.CAPABILITIES is not None, f"{type(self).__name__} does not declare CAPABILITIES"
        if "samples" in self.CAPABILITIES:
            pytest.skip(f"{type(self).__name__}'s driver streams samples")
        with pytest.raises(DriverError, match='"samples" capability'):
            driver.read_samples(0.0)

    def test_service_keeps_stimulation_going_and_silence_stops_it(self, driver: Driver) -> None:
        """While the caller calls service() every few ms the board stimulates past its dead-man time (heartbeats,
        re-arming: whatever it needs); once the caller falls silent, it stops by itself within that time."""
        watchdog_s = driver.info().limits.watchdog_ms / 1000.0
        driver.set_stimulation(SAFE)
        end = time.monotonic() + 3 * watchdog_s
        while time.monotonic() < end:
            driver.service(time.monotonic_ns())
            time.sleep(watchdog_s / 10)
        assert driver.status().stimulating, "service() did not keep the board stimulating"
        time.sleep(2 * watchdog_s + 0.1)
        st = driver.status()
        assert not st.stimulating and st.params is None, "the board stimulated on with the host silent"

    def test_a_connected_driver_is_not_lost(self, driver: Driver) -> None:
        """A driver that reaches its board is not lost, has no refusal, and reconnect() has nothing to do."""
        assert not driver.lost and driver.refusal is None and driver.refusal_kind is None
        assert driver.reconnect() is True
        driver.service(time.monotonic_ns())
        assert not driver.lost

    def test_set_and_stop_are_acked_and_reflected_in_status(self, driver: Driver) -> None:
        """set_stimulation and stop return once ACKed, and STATUS then reports the board's new state."""
        assert driver.status().stimulating is False
        driver.set_stimulation(SAFE)
        st = driver.status()
        assert st.stimulating is True and st.params is not None
        assert st.params.frequency_hz == pytest.approx(SAFE.frequency_hz)
        assert st.params.amplitude_ma == pytest.approx(SAFE.amplitude_ma)
        assert st.params.pulse_width_us == pytest.approx(SAFE.pulse_width_us)
        assert st.params.interphase_gap_us == pytest.approx(SAFE.interphase_gap_us)
        driver.stop()
        st = driver.status()
        assert st.stimulating is False and st.params is None

    def test_out_of_limits_command_is_refused_with_reason(self, driver: Driver) -> None:
        """A SET_STIM above the board's amplitude limit raises DriverError(reason="out_of_limits") and changes
        nothing on the board."""
        driver.set_stimulation(SAFE)
        too_much = StimParams(frequency_hz=50.0, amplitude_ma=driver.info().limits.max_amplitude_ma * 2,
                              pulse_width_us=100.0)
        with pytest.raises(DriverError) as exc:
            driver.set_stimulation(too_much)
        assert exc.value.reason == "out_of_limits"
        st = driver.status()
        assert st.stimulating and st.params is not None
        assert st.params.amplitude_ma == pytest.approx(SAFE.amplitude_ma)
        assert driver.counters.naks >= 1

    def test_pulse_that_overruns_its_period_is_refused(self, driver: Driver) -> None:
        """A biphasic pulse whose two phases and inter-phase gap do not fit in 1/f is refused as out_of_limits."""
        lim = driver.info().limits
        f = lim.max_frequency_hz
        with pytest.raises(DriverError) as exc:
            driver.set_stimulation(StimParams(frequency_hz=f, amplitude_ma=0.1, pulse_width_us=lim.min_pulse_width_us,
                                              interphase_gap_us=1e6 / f))
        assert exc.value.reason == "out_of_limits"

    def test_open_and_close_are_idempotent(self) -> None:
        """open() twice and close() twice are harmless, and a closed driver can be opened again."""
        d = self.make_driver()
        d.open()
        d.open()
        assert d.is_open
        d.close()
        d.close()
        assert not d.is_open
        d.open()
        try:
            assert d.status().stimulating is False
        finally:
            d.close()

    def test_context_manager_opens_and_closes(self) -> None:
        """The driver is a context manager; calls after the block raise DriverError telling to open() first."""
        d = self.make_driver()
        with d as opened:
            assert opened is d and d.is_open
            assert d.info().device_id
        assert not d.is_open
        with pytest.raises(DriverError, match="open"):
            d.status()

    def test_errors_are_driver_errors(self, driver: Driver) -> None:
        """Link loss is reported as BoardLost, itself a DriverError, so callers need one except clause."""
        assert issubclass(BoardLost, DriverError)
        driver.set_stimulation(SAFE)
        driver.stop()
