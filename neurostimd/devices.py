"""The settings model of each stimulator kind (`[device] kind = ...`), each with the `build()` that makes its driver.

A device's driver lives in its own folder under drivers/; its settings model lives here, beside the others, with
one line in `neurostimd.registry.DEVICES`. These models import no driver: `build` imports it when called.

Besides `kind` and `build`, the loop and the config ask a device's settings (`DeviceSettings`) for:
- `heartbeat_interval_ms()`: how long the host may stay silent towards the device (None: nothing to feed);
- `watchdog_bound()`: the dead-man timeout the config must be able to feed, and how to name it, or None;
- `status_poll_interval_ms()`, `reconnect_interval_s()`, and `longest_watchdog_ms()` (the daemon refuses a device
  whose dead-man timeout is longer, whatever its driver checked);
- `with_port(port)`: the settings with `--port` applied (a ConfigError where the device has no port).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from neurostimd.core.settings import Strict
from neurostimd.errors import ConfigError

if TYPE_CHECKING:
    from neurostimd.drivers.base import Driver


@dataclass(frozen=True)
class DeviceContext:
    """What building a driver may need besides its settings: the loop's clock (the in-process board runs on it)
    and whether the loop reads its samples from the device (`[source] kind = "board"`)."""

    clock: Any = None
    stream_samples: bool = True


class DeviceSettings(Strict):
    """What every device's settings model provides; the defaults are those of a device with nothing to feed. Each
    kind adds `kind: Literal[...]` and `build(ctx: DeviceContext) -> Driver | None` (the registry refuses a model
    without them)."""

    def heartbeat_interval_ms(self) -> float | None:
        return None

    def watchdog_bound(self) -> tuple[float, str] | None:
        return None

    def status_poll_interval_ms(self) -> float:
        return 1000.0

    def longest_watchdog_ms(self) -> float:
        """The longest dead-man timeout a device of this kind may report (the daemon refuses a longer one)."""
        return 500.0

    def reconnect_interval_s(self) -> float:
        return 0.5

    def with_port(self, port: str) -> DeviceSettings:
        raise ConfigError(f"--port needs [device] kind = \"serial\" (the config has {getattr(self, 'kind', '?')!r})")


class _BoardLinkConfig(DeviceSettings):
    """What every board driven through the serial driver shares (a real port, or the in-process virtual board)."""

    heartbeat_ms: float = Field(100.0, gt=0)
    # A board whose dead-man timer is longer than this (or that has none) is refused: after the host dies it would go
    # on stimulating for that long.
    max_watchdog_ms: float = Field(500.0, gt=0)
    # How often the loop asks the board for STATUS and checks that it runs what was last acknowledged.
    status_poll_ms: float = Field(1000.0, gt=0, le=10_000)

    def heartbeat_interval_ms(self) -> float | None:
        return self.heartbeat_ms

    def status_poll_interval_ms(self) -> float:
        return self.status_poll_ms

    def longest_watchdog_ms(self) -> float:
        return self.max_watchdog_ms


class SerialDeviceConfig(_BoardLinkConfig):
    """A board on a serial port (real hardware, or neurostimd-sim behind a pty)."""

    kind: Literal["serial"] = "serial"
    port: str = "/dev/ttyACM0"
    baudrate: int = Field(2_000_000, gt=0)
    ack_timeout_ms: float = Field(100.0, gt=0)
    retries: int = Field(2, ge=0, le=10)
    reconnect_interval_ms: float = Field(500.0, gt=0)
    # Failed reconnects back off, doubling from reconnect_interval_ms up to this.
    reconnect_max_interval_ms: float = Field(5000.0, gt=0)

    def build(self, ctx: DeviceContext) -> Driver:
        from neurostimd.drivers.neurostim_board.driver import SerialBoardDriver

        return SerialBoardDriver(port=self.port, baudrate=self.baudrate, ack_timeout_ms=self.ack_timeout_ms,
                                 retries=self.retries, heartbeat_ms=self.heartbeat_ms,
                                 reconnect_interval_ms=self.reconnect_interval_ms,
                                 reconnect_max_interval_ms=self.reconnect_max_interval_ms,
                                 max_watchdog_ms=self.max_watchdog_ms)

    def watchdog_bound(self) -> tuple[float, str]:
        # a serial board's timer is read at the handshake and must be at most max_watchdog_ms, so a loop that
        # cannot feed even that one can never run
        return self.max_watchdog_ms, "the longest dead-man timer a board may have ([device] max_watchdog_ms) is"

    def reconnect_interval_s(self) -> float:
        return self.reconnect_interval_ms / 1000.0

    def with_port(self, port: str) -> SerialDeviceConfig:
        return self.model_copy(update={"port": port})

    @model_validator(mode="after")
    def _backoff_ordered(self) -> SerialDeviceConfig:
        if self.reconnect_max_interval_ms < self.reconnect_interval_ms:
            raise ValueError(f"reconnect_max_interval_ms ({self.reconnect_max_interval_ms:g}) is below "
                             f"reconnect_interval_ms ({self.reconnect_interval_ms:g})")
        return self


class VirtualDeviceConfig(_BoardLinkConfig):
    """The in-process virtual board: the serial driver over an in-memory link to the simulator's board logic."""

    kind: Literal["virtual"]
    n_channels: int = Field(8, gt=0)
    sample_rate_hz: float = Field(1000.0, gt=0)
    watchdog_ms: float = Field(250.0, gt=0)
    seed: int = 0
    # The simulated tissue behind the board's synthetic signal (neurostimd.firmware_sim.plants; docs/plants.md):
    # "markov" (the quick three-state plant, the default) or "beta" (the STN–GPe beta model).
    plant: Literal["markov", "beta"] = "markov"

    def build(self, ctx: DeviceContext) -> Driver:
        from neurostimd.firmware_sim.inprocess import VirtualBoardDriver

        return VirtualBoardDriver(n_channels=self.n_channels, sample_rate_hz=self.sample_rate_hz,
                                  watchdog_ms=self.watchdog_ms, seed=self.seed, clock=ctx.clock,
                                  stream_samples=ctx.stream_samples, heartbeat_ms=self.heartbeat_ms,
                                  max_watchdog_ms=self.max_watchdog_ms, plant=self.plant)

    def watchdog_bound(self) -> tuple[float, str]:
        return self.watchdog_ms, "the board's dead-man timer is"

    @model_validator(mode="after")
    def _watchdog_within_max(self) -> VirtualDeviceConfig:
        if self.watchdog_ms > self.max_watchdog_ms:
            raise ValueError(f"watchdog_ms ({self.watchdog_ms:g}) is above max_watchdog_ms "
                             f"({self.max_watchdog_ms:g}); the daemon would refuse this board")
        return self


class NoDeviceConfig(DeviceSettings):
    """No stimulator at all: decide and audit only (shadow mode forced)."""

    kind: Literal["none"]

    def build(self, ctx: DeviceContext) -> None:
        return None


def make_device(cfg: Any, clock: Any = None) -> Driver | None:
    """The driver the config's [device] asks for (not opened); None for `kind = "none"`."""
    return cfg.device.build(DeviceContext(clock=clock, stream_samples=cfg.source.kind == "board"))


class PulsePalDeviceConfig(DeviceSettings):
    """A Sanworks Pulse Pal (2 or 3, firmware 21 or 22) driving a stimulus isolator from one output channel. The
    isolator's gain and its maximum current are required: without them an amplitude in mA means nothing."""

    kind: Literal["pulsepal"]
    port: str = "/dev/ttyACM0"
    channel: int = Field(1, ge=1, le=4)
    # The length of the finite train the driver re-arms at every tick: how long the device stimulates on after the
    # host dies (it has no watchdog of its own).
    deadman_ms: float = Field(250.0, gt=0, le=500)
    # Required (None is refused with what to write): the stimulus isolator's gain and its maximum current.
    isolator_ma_per_v: float | None = Field(None, gt=0)
    isolator_max_ma: float | None = Field(None, gt=0)
    baudrate: int = Field(115_200, gt=0)
    reply_timeout_ms: float = Field(200.0, gt=0, le=5000)

    def build(self, ctx: DeviceContext) -> Driver:
        from neurostimd.drivers.pulsepal.driver import PulsePalDriver

        assert self.isolator_ma_per_v is not None and self.isolator_max_ma is not None  # _safe_link refuses None
        return PulsePalDriver(self.port, isolator_ma_per_v=self.isolator_ma_per_v,
                              isolator_max_ma=self.isolator_max_ma, channel=self.channel, deadman_ms=self.deadman_ms,
                              baudrate=self.baudrate, reply_timeout_ms=self.reply_timeout_ms)

    def heartbeat_interval_ms(self) -> float | None:
        # no heartbeat: service() re-arms the train at every tick, so the host's longest silence is one tick (the
        # config's check then asks for two ticks within the shortest train, see watchdog_bound)
        return None

    def shortest_train_ms(self) -> float:
        """The driver's shortest train for deadman_ms (drivers.pulsepal.driver.shortest_train_ms, which a test keeps
        equal; not imported, so that a config loads no driver): one period of two that fit, in 50 µs cycles."""
        cycles = int(self.deadman_ms * 1000) // 50
        return (cycles - 4) // 2 * 50 / 1000

    def watchdog_bound(self) -> tuple[float, str]:
        return self.shortest_train_ms(), ("the shortest train the Pulse Pal is re-armed with (about half of [device] "
                                          "deadman_ms, at the lowest frequency) is")

    def longest_watchdog_ms(self) -> float:
        return self.deadman_ms

    def with_port(self, port: str) -> PulsePalDeviceConfig:
        return self.model_copy(update={"port": port})

    @model_validator(mode="after")
    def _safe_link(self) -> PulsePalDeviceConfig:
        if self.isolator_ma_per_v is None:
            raise ValueError("isolator_ma_per_v is required: the stimulus isolator's gain in mA per volt of the Pulse "
                             "Pal's output (read it off the isolator's range setting); without it no amplitude in mA "
                             "can be converted to volts")
        if self.isolator_max_ma is None:
            raise ValueError("isolator_max_ma is required: the largest current the stimulus isolator may deliver, in "
                             "mA (its range or compliance limit); amplitudes above it are refused")
        if self.baudrate in (1200, 134):
            raise ValueError(f"baudrate = {self.baudrate} erases (1200, Arduino Due) or reboots (134, Teensy) a Pulse "
                             f"Pal; use any other rate (USB ignores it), e.g. 115200")
        if self.deadman_ms < 10:
            raise ValueError(f"deadman_ms = {self.deadman_ms:g} is too short for a train of two periods at the lowest "
                             f"usable frequency; use 100-500 ms (default 250)")
        return self


class StimJimDeviceConfig(DeviceSettings):
    """An Open Ephys StimJim (Teensy or RP2354B firmware) on a serial port, or the simulated one behind a pty
    (`python -m neurostimd.firmware_sim.stimjim --pty`). It has no watchdog: the driver programs trains of at most
    `deadman_ms` and re-arms them from every tick, so the output stops within deadman_ms of the host's death."""

    kind: Literal["stimjim"]
    port: str = "/dev/ttyACM0"
    baudrate: int = Field(115200, gt=0)
    channel: Literal[1, 2] = 1
    # The output mode of `channel`: current only (the loop's amplitudes are in mA); the other channel is grounded.
    mode: str = "current"
    # The device's current range is ±3.33 mA; past it the Teensy firmware's DAC code wraps and flips the polarity.
    max_amplitude_ma: float = Field(3.33, gt=0, le=3.33)
    deadman_ms: int = Field(250, gt=0, le=500)
    reply_timeout_ms: float = Field(250.0, gt=0, le=5000)
    status_poll_ms: float = Field(1000.0, gt=0, le=10_000)

    def build(self, ctx: DeviceContext) -> Driver:
        from neurostimd.drivers.stimjim.driver import StimJimDriver

        return StimJimDriver(port=self.port, baudrate=self.baudrate, channel=self.channel,
                             deadman_ms=self.deadman_ms, max_amplitude_ma=self.max_amplitude_ma,
                             reply_timeout_ms=self.reply_timeout_ms)

    def heartbeat_interval_ms(self) -> float:
        # service() must run more often than once per train, and a train lasts more than half of deadman_ms
        return self.deadman_ms / 2

    def watchdog_bound(self) -> tuple[float, str]:
        return float(self.deadman_ms), "the StimJim's dead-man train length ([device] deadman_ms) is"

    def longest_watchdog_ms(self) -> float:
        return float(self.deadman_ms)

    def status_poll_interval_ms(self) -> float:
        return self.status_poll_ms

    def with_port(self, port: str) -> StimJimDeviceConfig:
        return self.model_copy(update={"port": port})

    @model_validator(mode="after")
    def _safe_link_and_mode(self) -> StimJimDeviceConfig:
        if self.baudrate in (134, 1200):
            raise ValueError(f"baudrate = {self.baudrate}: that rate reboots or erases a Teensy-based StimJim; use "
                             f"115200 (the device ignores the rate)")
        if self.mode != "current":
            raise ValueError(f"mode = {self.mode!r}: the StimJim driver stimulates in current mode only (amplitudes "
                             f"are in mA); set mode = \"current\"")
        return self
