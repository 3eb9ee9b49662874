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


def _cfg(argv):
    p = argparse.ArgumentParser()
    add_sim_arguments(p)
    return sim_config(p.parse_args(argv))


def test_defaults_are_history_exact_with_calibration_block():
    cfg = _cfg([])
    assert cfg.prep_loop_order == "shot-outer" and cfg.calib == (3, 3) and cfg.phantom == "brain"


def test_options_reach_the_config():
    cfg = _cfg(["--loop-order", "tau-outer", "--recovery-delay-ms", "250", "--no-calib", "--phantom", "shepp-logan"])
    assert cfg.prep_loop_order == "tau-outer" and cfg.recovery_delay_ms == 250.0 and cfg.calib == (0, 0)
    assert cfg.phantom == "shepp-logan" and cfg.seq.recovery_delay_ms == 250.0
    assert _cfg(["--loop-order", "closed-form"]).seq.prep_loop_order is None
