"""Unit strings of streams and files become µV factors; missing, unknown and contradicting units are refused."""

from __future__ import annotations

import numpy as np
import pytest

from neurostimd.core.units import UnitError, config_uv, scales_to_uv, uv_per_unit


@pytest.mark.parametrize("unit", ["uV", "µV", "μV", "microvolts", "Microvolt", " UV ", "micro-volts", "micro volts"])
def test_microvolts_in_every_usual_spelling(unit: str) -> None:
    """Every usual spelling of microvolts, with the micro sign or the Greek mu, is a factor of 1."""
    assert uv_per_unit(unit) == 1.0


@pytest.mark.parametrize(("unit", "factor"), [("mV", 1e3), ("millivolts", 1e3), ("V", 1e6), ("Volts", 1e6),
                                              ("volt", 1e6), ("nV", 1e-3), ("nanovolts", 1e-3)])
def test_other_voltage_units_scale_to_microvolts(unit: str, factor: float) -> None:
    """Millivolts, volts and nanovolts scale by 1e3, 1e6 and 1e-3."""
    assert uv_per_unit(unit) == factor


def test_mne_lsl_exponents_need_a_voltage_channel_type() -> None:
    """MNE-LSL's FIFF multipliers (0 = V, -6 = µV, -3 = mV) count only for voltage channel types."""
    assert uv_per_unit("0", "eeg") == 1e6
    assert uv_per_unit("-6", "EEG") == 1.0
    assert uv_per_unit("-3", "seeg") == 1e3
    assert uv_per_unit("0", None) is None
    assert uv_per_unit("0", "mag") is None


@pytest.mark.parametrize("unit", [None, "", "  ", "counts", "a.u.", "uV/LSB", "kV", "microvolts?"])
def test_missing_or_unknown_units_have_no_factor(unit: str | None) -> None:
    """An absent, empty or unrecognised unit has no factor (the caller refuses it)."""
    assert uv_per_unit(unit) is None


def test_a_stream_without_units_is_refused_naming_the_channels_and_the_fix() -> None:
    """Without declared units the error names the channels and the [source] units key; with it, they take it."""
    with pytest.raises(UnitError, match=r"no unit declared for channel 0 \('Fz'\), channel 1 \('Cz'\).*units"):
        scales_to_uv([None, ""], labels=["Fz", "Cz"])
    np.testing.assert_array_equal(scales_to_uv([None, ""], configured="mV"), [1e3, 1e3])


def test_an_unknown_unit_is_refused_unless_the_config_states_one() -> None:
    """An unknown unit string is named in the error; the configured unit replaces it."""
    with pytest.raises(UnitError, match="unknown unit for channel 1: 'counts'"):
        scales_to_uv(["uV", "counts"])
    np.testing.assert_array_equal(scales_to_uv(["uV", "counts"], configured="uV"), [1.0, 1.0])


def test_declared_units_that_contradict_the_config_are_refused_with_both_named() -> None:
    """A stream declaring volts while [source] units says uV is refused, naming both."""
    with pytest.raises(UnitError, match=r"contradicts \[source\] units = 'uV'.*declares 'V'"):
        scales_to_uv(["V", "V"], configured="uV")
    np.testing.assert_array_equal(scales_to_uv(["microvolts", "µV"], configured="uV"), [1.0, 1.0])


def test_mixed_declared_units_scale_per_channel() -> None:
    """Channels in different units get their own factors, MNE-LSL's exponents through the stream type."""
    np.testing.assert_array_equal(scales_to_uv(["uV", "mV", "0"], stream_type="EEG"), [1.0, 1e3, 1e6])


def test_config_units_must_be_a_known_voltage_unit() -> None:
    """A config unit that is not a known voltage unit is an error listing the accepted spellings."""
    assert config_uv("microvolts") == 1.0
    with pytest.raises(ValueError, match=r"uV.*mV.*V"):
        config_uv("counts")


def test_a_bare_fiff_exponent_must_agree_with_the_configured_unit() -> None:
    """An MNE-LSL exponent on a channel of no voltage type cannot be applied, but `[source] units` does not override
    it silently: "0" (volts) against "uV" is a contradiction; "-6" agrees."""
    from neurostimd.core.units import UnitError, scales_to_uv

    assert scales_to_uv(["-6"], channel_types=[None], configured="uV").tolist() == [1.0]
    with pytest.raises(UnitError, match="contradicts"):
        scales_to_uv(["0"], channel_types=[None], configured="uV")
