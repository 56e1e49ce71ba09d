"""Validation and merging of a deployment's autoscaling settings."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import pytest

from modelhost.domain.autoscaling import (
    MAX_INSTANCES_LIMIT,
    AutoscalingSettings,
    SettingsError,
    validate_settings,
)


def test_defaults_match_the_api_contract() -> None:
    settings = validate_settings({})
    assert settings == AutoscalingSettings()
    assert (settings.min_instances, settings.max_instances) == (1, 1)


def test_to_dict_lists_every_knob_and_round_trips() -> None:
    settings = AutoscalingSettings(min_instances=0, max_instances=3, cooldown_s=120.0)
    raw = settings.to_dict()
    assert set(raw) == {f.name for f in fields(AutoscalingSettings)}
    assert validate_settings(raw) == settings


def test_partial_update_merges_over_current() -> None:
    current = validate_settings({"min_instances": 0, "max_instances": 4, "cooldown_s": 30})
    updated = validate_settings({"max_instances": 2}, current)
    assert updated.max_instances == 2
    assert updated.min_instances == 0
    assert updated.cooldown_s == 30.0


def test_ints_accepted_for_float_knobs() -> None:
    settings = validate_settings({"scale_up_threshold": 1, "idle_to_zero_s": 60})
    assert settings.scale_up_threshold == 1.0
    assert isinstance(settings.idle_to_zero_s, float)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"min_replicas": 1}, "min_replicas"),
        ({"min_instances": -1}, "min_instances"),
        ({"min_instances": 1.5}, "min_instances"),
        ({"min_instances": "1"}, "min_instances"),
        ({"min_instances": True}, "min_instances"),
        ({"max_instances": 0}, "max_instances"),
        ({"max_instances": MAX_INSTANCES_LIMIT + 1}, "max_instances"),
        ({"max_instances": None}, "max_instances"),
        ({"scale_up_threshold": 0}, "scale_up_threshold"),
        ({"scale_up_threshold": 1.5}, "scale_up_threshold"),
        ({"cooldown_s": -5}, "cooldown_s"),
        ({"cooldown_s": math.inf}, "cooldown_s"),
        ({"cooldown_s": math.nan}, "cooldown_s"),
        ({"panic_threshold": 0.5}, "panic_threshold"),
        ({"panic_headroom": 0.9}, "panic_headroom"),
        ({"stable_window_s": 0}, "stable_window_s"),
        ({"headroom_stddevs": -1}, "headroom_stddevs"),
        ({"scale_down_margin": -0.1}, "scale_down_margin"),
        ({"scale_down_margin": 1.5}, "scale_down_margin"),
        ({"scale_down_margin": math.nan}, "scale_down_margin"),
        ({"idle_to_zero_s": "soon"}, "idle_to_zero_s"),
        ({"min_instances": 3, "max_instances": 2}, "max_instances"),
        ({"panic_window_s": 120}, "panic_window_s"),
    ],
)
def test_bad_values_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(SettingsError) as info:
        validate_settings(raw)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert str(info.value)  # a message a user can act on


def test_min_above_current_max_names_min() -> None:
    current = validate_settings({"min_instances": 0, "max_instances": 2})
    with pytest.raises(SettingsError) as info:
        validate_settings({"min_instances": 3}, current)
    assert info.value.field == "min_instances"
    assert "max_instances (2)" in str(info.value)


def test_shrinking_stable_window_below_panic_window_names_stable() -> None:
    with pytest.raises(SettingsError) as info:
        validate_settings({"stable_window_s": 5})
    assert info.value.field == "stable_window_s"


def test_unknown_key_lists_known_ones() -> None:
    with pytest.raises(SettingsError) as info:
        validate_settings({"inactive_shutdown": 60})
    assert "min_instances" in str(info.value)


def test_not_an_object() -> None:
    with pytest.raises(SettingsError) as info:
        validate_settings([("min_instances", 1)])  # type: ignore[arg-type]
    assert info.value.field == "settings"


def test_failed_update_leaves_current_untouched() -> None:
    current = validate_settings({"max_instances": 4})
    with pytest.raises(SettingsError):
        validate_settings({"max_instances": 2, "cooldown_s": -1}, current)
    assert current.max_instances == 4
