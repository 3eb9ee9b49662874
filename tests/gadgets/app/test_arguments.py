"""Shared CLI arguments: -p KEY=VALUE parsing and the simulation options."""

from __future__ import annotations

import argparse

import pytest

from qmapinr.gadgets.app.arguments import add_sim_arguments, parse_properties, sim_config


def test_properties_parse_and_reject_missing_equals():
    assert parse_properties(["epochs=3", " lr = 0.1 "]) == {"epochs": "3", "lr": "0.1"}
    assert parse_properties(None) == {}
    with pytest.raises(argparse.ArgumentTypeError, match="key=value"):
        parse_properties(["epochs"])


def test_sim_arguments_build_the_simulation_config():
    p = argparse.ArgumentParser()
    add_sim_arguments(p)
    cfg = sim_config(p.parse_args(["--shape", "4,16,16", "--coils", "2", "--R", "8", "--snr", "0"]))
    assert cfg.shape == (4, 16, 16) and cfg.ncoils == 2 and cfg.R == 8.0 and cfg.snr is None
    with pytest.raises(SystemExit):
        p.parse_args(["--shape", "4,16"])
