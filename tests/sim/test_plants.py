"""The named plants (neurostimd.firmware_sim.plants): the Markov plant unchanged behind the interface, and the
STN–GPe beta model — the property the paper reports, its response to the delivered parameters, determinism, and
its wiring into the simulated board, the simulator's options, the device config and the training-data writer."""

from __future__ import annotations

import time
import typing
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from neurostimd.devices import VirtualDeviceConfig
from neurostimd.drivers.types import SampleBlock, StimParams
from neurostimd.firmware_sim.__main__ import build_parser, make_source
from neurostimd.firmware_sim.generate import generate_plant_recording
from neurostimd.firmware_sim.generator import SyntheticSource
from neurostimd.firmware_sim.inprocess import VirtualBoardDriver
from neurostimd.firmware_sim.plants import PLANTS, PlantModel, make_plant
from neurostimd.firmware_sim.plants.beta import BetaParams, BetaPlant
from neurostimd.firmware_sim.plants.markov import MarkovPlant

FS = 1000.0
DBS_130 = StimParams(frequency_hz=130.0, amplitude_ma=2.5, pulse_width_us=60.0)


def fixed_coupling(kappa: float, **kw: float) -> BetaParams:
    """Beta-plant parameters with the coupling held at `kappa` (no drift, no jitter)."""
    return BetaParams(kappa_low=kappa, kappa_high=kappa, kappa_jitter_sd=0.0, **kw)


def run_beta(params: BetaParams, stim: StimParams | None = None, *, seconds: float = 12.0, seed: int = 0,
             settle_s: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """(LFP after settle_s, the biomarker per 50 ms after settle_s) of a beta plant run under `stim`."""
    plant = BetaPlant(8, FS, seed, params=params)
    blocks, bio = [], []
    for _ in range(int(seconds * 20)):
        blocks.append(plant.step(50, stim))
        bio.append(plant.biomarker)
    skip = int(settle_s * 20)
    return np.concatenate(blocks[skip:]), np.asarray(bio[skip:])


def stn_trace(params: BetaParams, *, seconds: float = 8.0, settle_s: float = 2.0, gpe: bool = False) -> typing.Any:
    """The STN rate per sample after settle_s (and the GPe rate with gpe=True), without stimulation."""
    plant = BetaPlant(1, FS, 0, params=params)
    stn, pallidum = [], []
    for i in range(int(seconds * FS)):
        plant.step(1, None)
        if i >= settle_s * FS:
            stn.append(plant.stn_rate_hz)
            pallidum.append(plant.gpe_rate_hz)
    return (np.asarray(stn), np.asarray(pallidum)) if gpe else np.asarray(stn)


def peak_hz(x: np.ndarray, lo: float = 4.0, hi: float = 100.0) -> float:
    spec = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / FS)
    band = (f >= lo) & (f <= hi)
    return float(f[band][np.argmax(spec[band])])


def test_the_registry_and_the_device_config_name_the_same_plants() -> None:
    """[device] plant accepts exactly the registry's plants, and refuses another name."""
    hints = typing.get_type_hints(VirtualDeviceConfig)
    assert set(typing.get_args(hints["plant"])) == set(PLANTS)
    assert VirtualDeviceConfig(kind="virtual", plant="beta").plant == "beta"
    with pytest.raises(ValidationError, match="plant"):
        VirtualDeviceConfig.model_validate({"kind": "virtual", "plant": "epileptor"})
    with pytest.raises(ValueError, match="unknown plant 'nope'; the plants are markov, beta"):
        make_plant("nope", 8, FS)


def test_every_plant_implements_the_interface() -> None:
    """Each registered plant is a PlantModel whose step returns float32 µV of the asked shape and whose state is one
    of its states."""
    for name in PLANTS:
        plant = make_plant(name, 4, FS, seed=1)
        assert isinstance(plant, PlantModel) and plant.name == name
        block = plant.step(25, DBS_130)
        assert block.shape == (25, 4) and block.dtype == np.float32
        assert 0 <= plant.state < len(plant.state_names)
        assert plant.in_target == (plant.state == plant.target_state)
        assert plant.time_s == pytest.approx(0.025)
        assert plant.truth and all(isinstance(v, float) for v in plant.truth.values())


def test_the_markov_plant_streams_byte_identical_samples_to_the_synthetic_source() -> None:
    """Through the plant interface the Markov plant gives the same bytes and states as SyntheticSource, call for
    call, with and without stimulation."""
    old = SyntheticSource(8, FS, 42, initial_state=1)
    new = MarkovPlant(8, FS, 42, initial_state=1)
    stim = StimParams(frequency_hz=50.0, amplitude_ma=3.5, pulse_width_us=300.0)
    for i in range(400):
        s = stim if (i // 50) % 2 else None
        a, b = old.read(10, s), new.step(10, s)
        assert a.tobytes() == b.tobytes()
        assert old.state == new.state
    assert new.charge_delivered_uc == old.plant.charge_delivered_uc > 0


def test_the_virtual_board_default_is_the_markov_plant_and_beta_is_picked_by_name() -> None:
    """VirtualBoardDriver streams the Markov plant by default (still a SyntheticSource, so the evaluation finds it)
    and the beta plant with plant="beta"; a recording with a plant is refused."""
    default = VirtualBoardDriver(n_channels=4, seed=3)
    assert isinstance(default.board.source, SyntheticSource) and default.plant is not None
    assert isinstance(default.plant_model, MarkovPlant)
    beta = VirtualBoardDriver(n_channels=4, seed=3, plant="beta")
    assert isinstance(beta.plant_model, BetaPlant) and beta.plant is None
    assert beta.board.n_channels == 4


def test_the_simulator_takes_plant_beta() -> None:
    """`--plant beta` makes the board stream the beta plant (8 channels unless --channels says otherwise); the
    default is the Markov plant; a plant and a recording together are refused."""
    parser = build_parser()
    src = make_source(parser.parse_args(["--pty", "--plant", "beta"]))
    assert isinstance(src, BetaPlant) and src.n_channels == 8
    assert isinstance(make_source(parser.parse_args(["--pty", "--plant", "beta", "--channels", "3"])), BetaPlant)
    assert isinstance(make_source(parser.parse_args(["--pty"])), MarkovPlant)
    with pytest.raises(ValueError, match="a --signal recording has no plant"):
        make_source(parser.parse_args(["--pty", "--plant", "beta", "--signal", "x.npz"]))
    with pytest.raises(ValueError, match="initial_state must be 0"):
        make_source(parser.parse_args(["--pty", "--plant", "beta", "--initial-state", "2"]))


def test_the_beta_plant_is_deterministic_given_its_seed() -> None:
    """Same seed and calls: the same samples and biomarker; another seed: other samples."""
    def run(seed: int) -> tuple[bytes, float]:
        p = BetaPlant(8, FS, seed)
        out = [p.step(50, DBS_130 if i % 40 > 20 else None) for i in range(100)]
        return np.concatenate(out).tobytes(), p.biomarker

    assert run(7) == run(7)
    assert run(7)[0] != run(8)[0]


def test_the_beta_trajectory_does_not_depend_on_how_the_caller_splits_it() -> None:
    """One call of 2000 samples and 200 calls of 10 give the same plant trajectory (state, charge, and the
    biomarker to rounding: the smoothing filters sum in another order) and the same LFP to float32 rounding."""
    a, b = BetaPlant(4, FS, 11), BetaPlant(4, FS, 11)
    x = a.step(2000, DBS_130)
    y = np.concatenate([b.step(10, DBS_130) for _ in range(200)])
    assert a.state == b.state and a.charge_delivered_uc == pytest.approx(b.charge_delivered_uc, rel=1e-12)
    assert a.biomarker == pytest.approx(b.biomarker, rel=1e-9)
    np.testing.assert_allclose(x, y, atol=1e-3)


def test_beta_oscillation_appears_above_a_critical_coupling_in_the_beta_band() -> None:
    """The paper's property: without noise the STN–GPe loop settles to a steady rate below the critical coupling and
    oscillates above it, at a frequency in the beta band (13–30 Hz)."""
    weak = stn_trace(fixed_coupling(0.4, noise_sd=0.0))
    strong = stn_trace(fixed_coupling(1.0, noise_sd=0.0))
    assert weak.std() < 0.1 and strong.std() > 10.0
    assert 13.0 <= peak_hz(strong) <= 30.0
    # the LFP the classifier sees carries it too, above its measurement noise
    lfp_weak, _ = run_beta(fixed_coupling(0.4, noise_sd=0.0), seconds=6.0, settle_s=3.0)
    lfp_strong, _ = run_beta(fixed_coupling(1.0, noise_sd=0.0), seconds=6.0, settle_s=3.0)
    assert 13.0 <= peak_hz(lfp_strong[:, 0]) <= 30.0 and lfp_strong[:, 0].std() > 2 * lfp_weak[:, 0].std()
    # and the state the classifier is to find follows: beta_high when oscillating, beta_low when not
    p = BetaPlant(8, FS, 0, params=fixed_coupling(1.0))
    q = BetaPlant(8, FS, 0, params=fixed_coupling(0.4))
    for _ in range(60):
        p.step(50, None)
        q.step(50, None)
    assert (p.state, q.state) == (1, 0)
    assert p.biomarker > 2 * p.params.beta_threshold and q.biomarker < 0.6 * q.params.beta_threshold


def test_the_oscillating_state_is_near_the_papers_parkinsonian_targets() -> None:
    """In the beta-prone regime (noise-free) the STN and GPe mean rates are within a third of the paper's
    Parkinsonian targets (25.8 and 44.8 spikes/s, its Table 5), the STN swings over most of its 0.2–76.9 range,
    and the oscillation is within 15 % of the paper's 15 Hz."""
    s, g = stn_trace(fixed_coupling(1.0, noise_sd=0.0), gpe=True)
    assert abs(s.mean() - 25.8) < 25.8 / 3 and abs(g.mean() - 44.8) < 44.8 / 3
    assert s.min() < 15.0 and s.max() > 50.0
    assert abs(peak_hz(s) - 15.0) < 0.15 * 15.0


def test_beta_falls_with_dbs_amplitude_above_a_threshold() -> None:
    """130 Hz, 60 µs DBS: 1 mA leaves the beta amplitude within 15 % of no stimulation, 2.5 mA cuts it by more
    than 80 %, and the curve does not rise with amplitude past the threshold."""
    params = fixed_coupling(1.0)
    amps = [0.0, 1.0, 1.5, 2.0, 2.5, 3.0]
    beta = []
    for amp in amps:
        stim = StimParams(frequency_hz=130.0, amplitude_ma=amp, pulse_width_us=60.0) if amp > 0 else None
        beta.append(float(run_beta(params, stim, seconds=6.0)[1].mean()))
    off = beta[0]
    assert beta[1] > 0.85 * off
    assert beta[4] < 0.2 * off and beta[5] < 0.2 * off
    assert beta[2] >= beta[3] >= beta[4]


def test_the_response_depends_on_frequency_and_pulse_width() -> None:
    """The same 2.5 mA suppresses beta at 130 Hz but hardly at 20 Hz; at 1.5 mA a 90 µs pulse suppresses it and a
    30 µs one does not (the charge per pulse counts)."""
    params = fixed_coupling(1.0)

    def beta(f: float, amp: float, pw: float) -> float:
        return float(run_beta(params, StimParams(frequency_hz=f, amplitude_ma=amp, pulse_width_us=pw),
                              seconds=6.0)[1].mean())

    assert beta(20.0, 2.5, 60.0) > 3 * beta(130.0, 2.5, 60.0)
    assert beta(130.0, 1.5, 30.0) > 3 * beta(130.0, 1.5, 90.0)


def test_the_charge_delivered_counts_each_pulse() -> None:
    """One second at 130 Hz, 2 mA, 60 µs delivers 130 pulses of 0.12 µC per phase (±1 pulse for the phase)."""
    p = BetaPlant(2, FS, 0)
    p.step(1000, StimParams(frequency_hz=130.0, amplitude_ma=2.0, pulse_width_us=60.0))
    assert abs(p.charge_delivered_uc - 130 * 0.12) <= 0.12 + 1e-9
    p.step(1000, None)
    assert abs(p.charge_delivered_uc - 130 * 0.12) <= 0.12 + 1e-9


def test_the_slow_drift_visits_both_states_without_stimulation() -> None:
    """Left alone for 5 minutes, the plant spends at least a tenth of the time in each state."""
    p = BetaPlant(2, FS, 5)
    states = []
    for _ in range(300 * 20):
        p.step(50, None)
        states.append(p.state)
    frac_high = float(np.mean(states))
    assert 0.1 < frac_high < 0.9


def test_the_training_writer_labels_a_free_running_beta_plant() -> None:
    """generate --plant beta: labels are the plant's two states (both present), the class names its state names,
    and the same seed writes the same arrays."""
    a = generate_plant_recording("beta", 120.0, 4, FS, seed=2)
    b = generate_plant_recording("beta", 120.0, 4, FS, seed=2)
    assert a["data"].shape == (120_000, 4) and a["labels"].shape == (120_000,)
    assert list(a["class_names"]) == ["beta_low", "beta_high"]
    assert set(np.unique(a["labels"]).tolist()) == {0, 1}
    assert np.array_equal(a["data"], b["data"]) and np.array_equal(a["labels"], b["labels"])


def test_the_beta_plant_runs_much_faster_than_real_time() -> None:
    """Even on a loaded machine the beta plant simulates at least 5 s per wall second (the board needs 1)."""
    p = BetaPlant(8, FS, 0)
    t0 = time.perf_counter()
    for _ in range(200):
        p.step(50, DBS_130)
    assert 10.0 / (time.perf_counter() - t0) > 5.0


def test_dbs_through_the_virtual_board_suppresses_beta_and_stopping_lets_it_back() -> None:
    """Through the real driver and protocol: in the beta-prone regime, SET_STIM 130 Hz / 60 µs / 2.5 mA takes the
    plant to beta_low within 3 s, delivers 390 pulses of 0.15 µC, and after STOP beta comes back."""
    from neurostimd.clock import VirtualClock

    clock = VirtualClock()
    d = VirtualBoardDriver(n_channels=8, seed=4, plant="beta", clock=clock, initial_state=1, sample_format="float32")
    d.open()
    plant = d.plant_model
    assert isinstance(plant, BetaPlant)

    def run(seconds: float) -> int:
        end = clock.now_ns() + int(seconds * 1e9)
        n = 0
        while clock.now_ns() < end:
            n += sum(len(b.data) for b in d.read_samples(0.05))
            d.service(clock.now_ns())
        return n

    try:
        assert run(3.0) == 3000 and plant.state == 1
        d.set_stimulation(StimParams(130.0, 2.5, 60.0, 50.0))
        run(3.0)
        assert plant.state == 0 and plant.biomarker < 0.2 * plant.params.beta_threshold
        assert plant.charge_delivered_uc == pytest.approx(390 * 0.15, abs=0.15)
        d.stop()
        run(2.0)
        assert plant.state == 1 and plant.charge_delivered_uc == pytest.approx(390 * 0.15, abs=0.15)
    finally:
        d.close()


def test_the_simulator_process_streams_the_beta_plant(tmp_path: Path) -> None:
    """`neurostimd-sim --pty --plant beta` announces 8 channels at 1 kHz and streams, under its sample counter, the
    samples the same plant makes in process for the same seed."""
    from neurostimd.drivers.neurostim_board.driver import SerialBoardDriver
    from tests.sim.simproc import running_sim

    with running_sim(tmp_path, "--plant", "beta", "--seed", "9", "--format", "float32") as sim, \
            SerialBoardDriver(port=sim.path, ack_timeout_ms=250.0, retries=3) as d:
        info = d.info()
        assert info.n_channels == 8 and info.sample_rate_hz == 1000.0
        blocks: list[SampleBlock] = []
        deadline = time.monotonic() + 10
        while len(blocks) < 20 and time.monotonic() < deadline:
            blocks += d.read_samples(0.2)
    assert len(blocks) >= 20
    last = max(b.first_index + len(b.data) for b in blocks)
    ref = BetaPlant(8, FS, 9)
    expected = np.concatenate([ref.step(10, None) for _ in range((last + 9) // 10)])
    for b in blocks:
        np.testing.assert_allclose(b.data, expected[b.first_index:b.first_index + len(b.data)], atol=1e-3)


def test_the_beta_plant_refuses_a_rate_that_would_change_its_integration_step() -> None:
    """Its DBS input is a 1 ms step per pulse into a saturating sigmoid, so its response to stimulation depends on
    the step: a rate that is not 1000 Hz divided by a whole number is refused, naming the rule."""
    for bad in (2000.0, 4000.0, 300.0):
        with pytest.raises(ValueError, match="integrates in 1 ms steps"):
            BetaPlant(2, bad, 0)
    for good in (1000.0, 500.0, 250.0):
        assert BetaPlant(2, good, 0).dt_s == pytest.approx(1e-3)
