"""Scores against truth: NRMSE definition, tissue medians and biases, sphere line fits."""

from __future__ import annotations

import math

import numpy as np

from qmapinr.recon.evaluation.metrics import nrmse, score


def test_nrmse_definition_and_empty_region():
    true = np.full((2, 2, 2), 100.0)
    est = true * 1.1
    region = np.ones_like(true, dtype=bool)
    assert abs(nrmse(est, true, region) - 0.1) < 1e-12
    assert nrmse(np.zeros_like(true), true, region) == 1.0  # zeros score exactly 1
    assert math.isnan(nrmse(est, true, np.zeros_like(region)))


def test_tissue_bias_and_wmgm_region():
    labels = np.zeros((1, 4, 4), dtype=int)
    labels[0, :2] = 1  # WM
    labels[0, 2:] = 2  # GM
    truth = {"T1": np.where(labels == 1, 800.0, 1300.0)}
    maps = {"T1": np.where(labels == 1, 880.0, 1300.0)}
    s = score(maps, truth, labels, {0: "background", 1: "WM", 2: "GM"}, np.ones_like(labels, dtype=bool))
    assert abs(s.bias["T1"]["WM"] - 0.10) < 1e-12 and s.bias["T1"]["GM"] == 0.0
    assert s.nrmse_wmgm["T1"] > 0 and s.medians["T1"]["WM"] == (880.0, 800.0)


def test_sphere_fit_slope_and_r2():
    labels = np.repeat(np.arange(1, 6), 4).reshape(1, 5, 4)
    true_t1 = {lab: 200.0 * lab for lab in range(1, 6)}
    truth = {"T1": np.vectorize(true_t1.get)(labels).astype(float)}
    maps = {"T1": 1.2 * truth["T1"] + 10.0}
    names = {lab: f"T1-{lab:02d}" for lab in range(1, 6)}
    s = score(maps, truth, labels, names, np.ones_like(labels, dtype=bool))
    assert abs(s.spheres["T1"]["slope"] - 1.2) < 1e-9 and abs(s.spheres["T1"]["r2"] - 1.0) < 1e-9
