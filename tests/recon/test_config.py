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
