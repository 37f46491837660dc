"""The closed loop's boundary checks of the stream, with the default bundle: units, montage, effective rate, gaps,
saturation and plausibility each put the safe state in force (no stimulation), while the same signal delivered as
declared is classified and stimulated on — in replay on a virtual clock, and from LSL outlet processes on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from neurostimd.clock import MonotonicClock, VirtualClock
from neurostimd.config import Config
from neurostimd.errors import BundleError
from neurostimd.firmware_sim.generate import generate_recording
from neurostimd.loop import ClosedLoop
from neurostimd.outputs.audit import AuditLog
from neurostimd.sources.lsl import LslSource
from neurostimd.sources.replay import ReplaySource
from neurostimd.sources.settings import LslSourceConfig, ReplaySourceConfig
from tests.loop.collect import DecisionLog
from tests.sources.test_lsl_source import OutletProcess, unique

NAMES = [f"ch{i:02d}" for i in range(32)]


@pytest.fixture(scope="module")
def sim() -> dict[str, np.ndarray]:
    """20 s of generator signal: every state, stimulated on by the default bundle when delivered as declared."""
    return generate_recording(20.0, 32, 1000.0, seed=5)


def replay(cfg: Config, bundle: Any, tmp_path: Path, arrays: dict[str, Any], **source_kw: Any
           ) -> tuple[list[dict[str, Any]], ClosedLoop]:
    """Replay `arrays` (an .npz's) through the loop on a virtual clock, in shadow mode; the decisions and the loop."""
    path = tmp_path / f"r{len(list(tmp_path.iterdir()))}.npz"
    np.savez(path, **arrays)
    clock = VirtualClock()
    src = ReplaySource(path, 1.0, clock, **source_kw)
    src.open()
    decisions: list[dict[str, Any]] = []
    c = cfg.model_copy(update={"source": ReplaySourceConfig(kind="replay", path=path, speed="max",
                                                            channels=source_kw.get("channels"))})
    with AuditLog(tmp_path / "audit.jsonl", durable=False) as audit:
        loop = ClosedLoop(c, clock=clock, source=src, bundle=bundle, audit=audit, driver=None,
                          listeners=[DecisionLog(decisions)])
        loop.run(should_stop=lambda: False)
    src.close()
    return decisions, loop


def stimulated(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in decisions if d["applied"] is not None]


def test_the_clean_replay_stimulates(cfg: Config, bundle: Any, tmp_path: Path, sim: dict[str, Any]) -> None:
    """The control for the tests below: the recording as it is is classified and stimulated on, with no boundary
    fault once the rate has its first verdict."""
    decisions, _ = replay(cfg, bundle, tmp_path, sim)
    assert len(stimulated(decisions)) > 100
    late = [d for d in decisions if d["t_data_s"] is not None and d["t_data_s"] > 2.0]
    assert not any({"rate_mismatch", "implausible_signal", "startup"} & set(d["faults"]) for d in late)


def _burst_of_1e20(cfg: Config, bundle: Any, tmp_path: Path, sim: dict[str, Any]
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """The clean replay's decisions, those of the same recording with ten samples of 1e20 µV on channel 7 one second
    into stimulation, and the burst's first sample index."""
    clean, _ = replay(cfg, bundle, tmp_path, sim)
    t_stim = next(d["t_data_s"] for d in clean if d["applied"] is not None and d["t_data_s"] > 5.0)
    data = sim["data"].copy()
    at = int((t_stim + 1.0) * 1000)
    data[at:at + 10, 7] = 1e20
    decisions, _ = replay(cfg, bundle, tmp_path, {**sim, "data": data})
    return clean, decisions, at


def test_samples_of_1e20_uv_stop_stimulation_at_that_decision(cfg: Config, bundle: Any, tmp_path: Path,
                                                              sim: dict[str, Any]) -> None:
    """Ten samples of 1e20 µV on one channel during stimulation: every decision whose window holds them is
    implausible_signal and commands nothing."""
    _, decisions, at = _burst_of_1e20(cfg, bundle, tmp_path, sim)
    hit = [d for d in decisions if at / 1000 <= d["t_data_s"] < (at + 10) / 1000 + 0.55]
    assert len(hit) >= 10
    assert all("implausible_signal" in d["faults"] and d["applied"] is None for d in hit)
    assert any(d["applied"] is not None for d in decisions if d["t_data_s"] < at / 1000), "it was stimulating"


def test_after_a_1e20_burst_the_classifier_is_not_left_working_on_poisoned_features(
        cfg: Config, bundle: Any, tmp_path: Path, sim: dict[str, Any]) -> None:
    """Samples beyond the plausibility bound never reach the feature filters (their ringing lasted seconds after the
    fault cleared, and the decisions then differed from the clean run by up to 0.98): once the fault clears, every
    fault-free decision's probabilities are within 0.1 of the clean run's at the same tick."""
    clean, decisions, at = _burst_of_1e20(cfg, bundle, tmp_path, sim)
    by_tick = {d["tick"]: d for d in clean}
    after = [(d, by_tick[d["tick"]]) for d in decisions
             if d["t_data_s"] is not None and d["t_data_s"] >= at / 1000 and not d["faults"] and d["probs"] is not None
             and by_tick[d["tick"]]["probs"] is not None]
    assert len(after) >= 100, "the loop decided again after the burst"
    worst = max(max(abs(a - b) for a, b in zip(d["probs"], c["probs"], strict=True)) for d, c in after)
    assert worst <= 0.1, f"decisions after the burst differ from the clean run by up to {worst:.2f}"


def test_a_whole_recording_in_volts_read_as_microvolts_never_stimulates(cfg: Config, bundle: Any, tmp_path: Path,
                                                                        sim: dict[str, Any]) -> None:
    """Samples a million times too small (volts taken for µV) are implausible in every window: no stimulation."""
    decisions, _ = replay(cfg, bundle, tmp_path, {**sim, "data": (sim["data"] * 1e-6).astype(np.float32)})
    assert not stimulated(decisions)
    assert all("implausible_signal" in d["faults"] for d in decisions if d["t_data_s"] and d["t_data_s"] > 0.6)


def test_saturation_is_detected_without_any_configuration(cfg: Config, bundle: Any, tmp_path: Path,
                                                          sim: dict[str, Any]) -> None:
    """A clipped stretch at 3x the training maximum of channel 0 is saturation by default (from the bundle's
    statistics): those decisions command nothing."""
    st = bundle.signal_stats
    level = float(3.0 * st.abs_max[0]) + 1.0
    data = sim["data"].copy()
    data[9000:9030, 0] = level
    with capture_logs() as logs:
        decisions, _ = replay(cfg, bundle, tmp_path, {**sim, "data": data})
    assert any(e["event"] == "saturation_threshold" and e["origin"] == "training_stats" for e in logs)
    hit = [d for d in decisions if 9.0 <= d["t_data_s"] < 9.55]
    assert hit and all("quality_saturation" in d["faults"] and d["applied"] is None for d in hit)


def test_reversed_channels_are_put_back_into_the_models_order(cfg: Config, bundle: Any, tmp_path: Path,
                                                              sim: dict[str, Any]) -> None:
    """A recording whose channels (data and names) are reversed gives exactly the decisions of the original."""
    original, _ = replay(cfg, bundle, tmp_path, sim)
    rev = {**sim, "data": np.ascontiguousarray(sim["data"][:, ::-1]), "channel_names": np.array(NAMES[::-1])}
    with capture_logs() as logs:
        reversed_, loop = replay(cfg, bundle, tmp_path, rev)
    assert reversed_ == original
    assert any(e["event"] == "montage_reordered" for e in logs)
    np.testing.assert_array_equal(loop.ring.latest(100).data, sim["data"][-100:])


def test_a_missing_channel_is_refused_naming_it(cfg: Config, bundle: Any, tmp_path: Path,
                                                sim: dict[str, Any]) -> None:
    """A recording with ch05 relabelled "T7" is refused at start, naming the missing and the extra channel."""
    names = list(NAMES)
    names[5] = "T7"
    with pytest.raises(BundleError, match=r"missing: 'ch05'.*not in the model: 'T7'"):
        replay(cfg, bundle, tmp_path, {**sim, "channel_names": np.array(names)})


def test_a_wider_recording_is_refused_until_channels_picks_the_models(cfg: Config, bundle: Any, tmp_path: Path,
                                                                      sim: dict[str, Any]) -> None:
    """Two extra EOG channels are refused with the `channels` fix; with it, the decisions are the original's."""
    original, _ = replay(cfg, bundle, tmp_path, sim)
    eog = np.random.default_rng(0).normal(0, 30, (len(sim["data"]), 2)).astype(np.float32)
    wide = {**sim, "data": np.concatenate([eog[:, :1], sim["data"], eog[:, 1:]], axis=1),
            "channel_names": np.array(["EOG1", *NAMES, "EOG2"])}
    with pytest.raises(BundleError, match=r"not in the model: 'EOG1', 'EOG2'.*\[source\] channels = \['ch00'"):
        replay(cfg, bundle, tmp_path, wide)
    picked, _ = replay(cfg, bundle, tmp_path, wide, channels=NAMES)
    assert picked == original


def test_a_recording_without_names_is_checked_by_count_with_a_warning(cfg: Config, bundle: Any, tmp_path: Path,
                                                                      sim: dict[str, Any]) -> None:
    """Without channel_names the montage cannot be checked: the loop says so once and runs."""
    with capture_logs() as logs:
        decisions, _ = replay(cfg, bundle, tmp_path, {k: v for k, v in sim.items() if k != "channel_names"})
    assert [e["event"] for e in logs].count("montage_unchecked") == 1
    assert stimulated(decisions)


@pytest.mark.parametrize("missing", [20, 1])
def test_a_gap_in_a_recordings_timestamps_faults_its_windows(cfg: Config, bundle: Any, tmp_path: Path,
                                                              sim: dict[str, Any], missing: int) -> None:
    """A 20 ms hole (or one missing sample) in the recording's own timestamps is quality_gap, with no stimulation,
    in exactly the windows that span it."""
    n = len(sim["data"])
    k = np.arange(n, dtype=np.float64)
    k[10_000:] += missing
    decisions, loop = replay(cfg, bundle, tmp_path, {**sim, "timestamps": 100.0 + k / 1000.0})
    assert loop.ring.counters.gaps == 1 and loop.ring.counters.missing_samples == missing
    hit = [d for d in decisions if "quality_gap" in d["faults"]]
    gap_t = (10_000 + missing) / 1000
    assert hit and all(gap_t <= d["t_data_s"] < gap_t + 0.55 for d in hit)
    assert all(d["applied"] is None for d in hit)
    assert len(hit) >= 10


# --- LSL on loopback --------------------------------------------------------------------------------------------------
def lsl_run(cfg: Config, bundle: Any, tmp_path: Path, src_cfg: LslSourceConfig, seconds: float,
            until: Any = None) -> tuple[list[dict[str, Any]], ClosedLoop, LslSource]:
    """Run the loop (shadow mode, real clock) on an LSL source for `seconds`; decisions, loop and the open source."""
    src = LslSource(src_cfg)
    src.open()
    decisions: list[dict[str, Any]] = []
    audit = AuditLog(tmp_path / f"audit-{unique('a')}.jsonl", durable=False)
    loop = ClosedLoop(cfg.model_copy(update={"source": src_cfg}), clock=MonotonicClock(), source=src,
                      bundle=bundle, audit=audit, driver=None, listeners=[DecisionLog(decisions)])
    try:
        loop.run(should_stop=(lambda: until(decisions)) if until else (lambda: False), duration_s=seconds)
    finally:
        audit.close()
    return decisions, loop, src


def sim_outlet(tmp_path: Path, sim: dict[str, Any], name: str, **kw: Any) -> OutletProcess:
    path = tmp_path / "sim.npz"
    if not path.exists():
        np.savez(path, **sim)
    return OutletProcess(name=name, source_id=kw.pop("source_id", name), channels=32, rate=1000.0, chunk=20,
                         signal=path, labels=",".join(NAMES), wait_consumer=20, **kw)


def lsl_cfg(name: str, **kw: Any) -> LslSourceConfig:
    return LslSourceConfig(kind="lsl", name=name, n_channels=32, sample_rate_hz=1000.0, resolve_timeout_s=10,
                           **kw)


def test_an_lsl_stream_in_volts_is_scaled_and_stimulated_on(cfg: Config, bundle: Any, tmp_path: Path, outlets,
                                                           sim: dict[str, Any]) -> None:
    """The LSL control: the recording streamed in volts (declared) is read in µV, classified and stimulated on."""
    name = unique("volts")
    outlets.append(sim_outlet(tmp_path, sim, name, unit="V", scale=1e-6))
    decisions, loop, src = lsl_run(cfg, bundle, tmp_path, lsl_cfg(name), 12.0,
                                   until=lambda ds: len(stimulated(ds)) >= 5)
    src.close()
    assert len(stimulated(decisions)) >= 5
    assert 5.0 < float(np.std(loop.ring.latest(1000).data)) < 500.0


def test_volts_declared_as_microvolts_in_the_config_never_stimulate(cfg: Config, bundle: Any, tmp_path: Path,
                                                                   outlets, sim: dict[str, Any]) -> None:
    """A stream without units carrying volts, with [source] units = "uV" wrongly stated: implausible, no stimulation
    (the player-at-default incident)."""
    name = unique("vasuv")
    outlets.append(sim_outlet(tmp_path, sim, name, unit="", scale=1e-6))
    decisions, _, src = lsl_run(cfg, bundle, tmp_path, lsl_cfg(name, units="uV"), 6.0)
    src.close()
    assert not stimulated(decisions)
    assert sum("implausible_signal" in d["faults"] for d in decisions) > 50


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_a_stream_at_twice_or_half_its_declared_rate_never_stimulates(cfg: Config, bundle: Any, tmp_path: Path,
                                                                     outlets, sim: dict[str, Any],
                                                                     factor: float) -> None:
    """An outlet that declares 1 kHz but produces at 2 kHz or 500 Hz (stamping truthfully) is rate_mismatch from
    the first verdict on, and nothing is ever stimulated."""
    name = unique("rate")
    outlets.append(sim_outlet(tmp_path, sim, name, true_rate=1000.0 * factor))
    with capture_logs() as logs:
        decisions, _, src = lsl_run(cfg, bundle, tmp_path, lsl_cfg(name), 6.0)
    src.close()
    assert not stimulated(decisions)
    judged = [d for d in decisions if "startup" not in d["faults"] and d["t_data_s"] is not None]
    assert len(judged) > 40 and all("rate_mismatch" in d["faults"] for d in judged)
    ev = next(e for e in logs if e["event"] == "rate_mismatch")
    assert ev["effective_hz"] == pytest.approx(1000.0 * factor, rel=0.1)


def test_a_foreign_outlet_after_the_real_one_vanished_is_never_stimulated_on(cfg: Config, bundle: Any,
                                                                           tmp_path: Path, outlets,
                                                                           sim: dict[str, Any]) -> None:
    """The real outlet stimulates; once it is gone, another process's same-name outlet with the same signal is
    refused and the loop stays in its safe state; the real outlet restarted (same source_id) is read again."""
    name = unique("foreign")
    outlets.append(sim_outlet(tmp_path, sim, name, source_id=f"{name}-amp"))
    c = lsl_cfg(name, stale_after_ms=200)
    src = LslSource(c)
    src.open()
    decisions: list[dict[str, Any]] = []
    with capture_logs() as logs, AuditLog(tmp_path / "audit.jsonl", durable=False) as audit:
        loop = ClosedLoop(cfg.model_copy(update={"source": c}), clock=MonotonicClock(), source=src, bundle=bundle,
                          audit=audit, driver=None, listeners=[DecisionLog(decisions)])
        loop.run(should_stop=lambda: len(stimulated(decisions)) >= 3, duration_s=12.0)
        assert len(stimulated(decisions)) >= 3, "the real outlet is stimulated on"
        outlets[0].kill()
        outlets.append(sim_outlet(tmp_path, sim, name, source_id=f"{name}-other"))
        mark = len(decisions)
        loop.run(should_stop=lambda: False, duration_s=5.0)
        after = decisions[mark:]
        outlets.append(sim_outlet(tmp_path, sim, name, source_id=f"{name}-amp"))
        samples = loop.ring.total_written
        loop.run(should_stop=lambda: loop.ring.total_written > samples + 2000, duration_s=15.0)
    src.close()
    assert len(after) > 80 and not stimulated(after[4:]), "nothing is commanded on the foreign outlet's data"
    assert sum(e["event"] == "lsl_stream_refused" for e in logs) == 1
    assert loop.ring.total_written > samples + 2000, "the real outlet's restart is read"


def test_an_edf_at_its_physical_rails_is_saturation(cfg: Config, bundle: Any, tmp_path: Path,
                                                      sim: dict[str, Any]) -> None:
    """An EDF whose channel 3 sits on its physical maximum for 20 ms is saturated there, by the range the file
    declares (no configuration), and those decisions command nothing."""
    import edfio

    data = sim["data"][:8000].astype(np.float64).copy()
    data[5000:5020, 3] = 1500.0
    signals = [edfio.EdfSignal(np.clip(data[:, c], -1500.0, 1500.0), 1000.0, label=NAMES[c],
                               physical_dimension="uV", physical_range=(-1500.0, 1500.0)) for c in range(32)]
    path = tmp_path / "rails.edf"
    edfio.Edf(signals).write(path)
    clock = VirtualClock()
    src = ReplaySource(path, 1.0, clock)
    src.open()
    decisions: list[dict[str, Any]] = []
    with capture_logs() as logs, AuditLog(tmp_path / "audit.jsonl", durable=False) as audit:
        loop = ClosedLoop(cfg, clock=clock, source=src, bundle=bundle, audit=audit, driver=None,
                          listeners=[DecisionLog(decisions)])
        loop.run(should_stop=lambda: False)
    src.close()
    assert any(e["event"] == "saturation_threshold" and e["origin"] == "source_range" for e in logs)
    hit = [d for d in decisions if "quality_saturation" in d["faults"]]
    assert hit and all(5.0 <= d["t_data_s"] < 5.6 and d["applied"] is None for d in hit)
