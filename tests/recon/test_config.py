"""Typed config parsing from string properties (XML / CLI / JSON)."""

from __future__ import annotations

import pytest

from qmapinr.recon.config import ConfigError, HashGridConfig, SummitConfig, field_names, from_properties


def test_defaults_and_overrides():
    cfg = from_properties(SummitConfig, {"epochs": "7", "lr": "2e-3", "map_grid.n_levels": "12",
                                         "map_grid.implementation": "torch"})
    assert cfg.epochs == 7 and cfg.lr == pytest.approx(2e-3)
    assert cfg.map_grid.n_levels == 12 and cfg.map_grid.implementation == "torch"
    assert cfg.map_grid.log2_hashmap_size == HashGridConfig().log2_hashmap_size  # untouched sub-field
    assert cfg.batch_x == SummitConfig().batch_x


def test_unknown_property_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown property 'epoch'.*epochs"):
        from_properties(SummitConfig, {"epoch": "3"})
    with pytest.raises(ConfigError, match="map_grid.levels"):
        from_properties(SummitConfig, {"map_grid.levels": "3"})


def test_bad_value_is_reported():
    with pytest.raises(ConfigError, match="epochs='many' is not a valid int"):
        from_properties(SummitConfig, {"epochs": "many"})
    with pytest.raises(ConfigError, match="is a group"):
        from_properties(SummitConfig, {"map_grid": "8"})


def test_field_names_lists_nested_fields():
    names = field_names(SummitConfig)
    assert {"epochs", "map_grid.n_levels", "coil_grid.base_resolution"} <= names
    assert "map_grid" not in names


@pytest.mark.parametrize("key, value, allowed", [
    ("coil_mode", "espirit", "inr, jsense, ratio"),
    ("forward", "fast", "structured, exact"),
    ("init", "zeros", "echo, dictionary, flat"),
    ("device", "gpu", "auto, cpu, cuda"),
    ("map_grid.implementation", "cuda", "auto, torch, tcnn"),
])
def test_literal_options_are_checked_at_parse_time(key, value, allowed):
    with pytest.raises(ConfigError, match=f"{key}='{value}' is not allowed; use one of: {allowed}"):
        from_properties(SummitConfig, {key: value})


def test_literal_values_parse_case_insensitively_to_the_canonical_spelling():
    cfg = from_properties(SummitConfig, {"forward": "Exact", "coil_grid.implementation": "TORCH"})
    assert cfg.forward == "exact" and cfg.coil_grid.implementation == "torch"


def test_check_literals_catches_a_directly_built_config():
    from qmapinr.recon.config import check_literals

    check_literals(SummitConfig())
    with pytest.raises(ConfigError, match="SummitConfig.map_grid.implementation='gpu'"):
        check_literals(SummitConfig(map_grid=HashGridConfig(implementation="gpu")))
