"""The [audit] table: rotation size and checkpoint interval are strict numbers within their bounds."""

from __future__ import annotations

import pytest

from neurostimd.config import parse_config
from neurostimd.errors import ConfigError


@pytest.mark.parametrize(("value", "ok"), [(4, True), (0.5, True), (0, False), (-1.0, False), ("4", False),
                                           (True, False)])
def test_rotate_mb_is_a_strict_positive_number(value: object, ok: bool) -> None:
    """[audit] rotate_mb takes a TOML number above 0 and nothing else."""
    data = {"audit": {"rotate_mb": value}}
    if ok:
        assert parse_config(data).audit.rotate_mb == value
    else:
        with pytest.raises(ConfigError) as err:
            parse_config(data)
        assert any(line.startswith("audit.rotate_mb") for line in err.value.errors)


@pytest.mark.parametrize(("value", "ok"), [(1000, True), (250.0, True), (1000.5, False), (0, False), ("1000", False)])
def test_checkpoint_interval_is_at_most_one_second(value: object, ok: bool) -> None:
    """[audit] checkpoint_ms is a number in (0, 1000]: a longer interval would hide more stimulation in a crash."""
    data = {"audit": {"checkpoint_ms": value}}
    if ok:
        assert parse_config(data).audit.checkpoint_ms == value
    else:
        with pytest.raises(ConfigError) as err:
            parse_config(data)
        assert any(line.startswith("audit.checkpoint_ms") for line in err.value.errors)
