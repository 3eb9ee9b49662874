"""Early validation and output guards: silent-failure inputs get one clear error, impossible settings too."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from qmapinr.recon.config import ConfigError, HashGridConfig, SummitConfig
from qmapinr.recon.kspace import KSpace6D, QuantMaps
from qmapinr.recon.methods.registry import reconstruct
from qmapinr.recon.methods.subspace import SubspaceConfig
from qmapinr.recon.methods.validate import ReconstructionError, check_maps, check_support, validate
from qmapinr.recon.sim.simulate import SimulationConfig, simulate

FAST = SummitConfig(epochs=1, coil_refine_iters=1, threads=1)


@pytest.fixture(scope="module")
def scan():
    ks, _ = simulate(SimulationConfig(shape=(4, 16, 16), ncoils=2, R=4.0, seed=1, nseg=8))
    return ks


def _subset(ks: KSpace6D, keep: np.ndarray, **meta) -> KSpace6D:
    return KSpace6D(ks.data[:, :, keep], ks.ky[keep], ks.kz[keep], ks.seg[keep], ks.tau[keep], ks.seq, ks.geometry,
                    noise=ks.noise, meta=dict(meta))


def _variant(ks: KSpace6D, name: str) -> KSpace6D:
    if name == "all_zero":
        return dataclasses.replace(ks, data=np.zeros_like(ks.data), meta={})
    if name == "one_3e38_sample":
        data = ks.data.copy()
        data[0, 0, 5, 3] = 3e38
        return dataclasses.replace(ks, data=data, meta={})
    if name == "nan_sample":
        data = ks.data.copy()
        data[1, 1, 7, 2] = np.nan
        return dataclasses.replace(ks, data=data, meta={})
    shot = np.asarray(ks.meta["shot"])
    if name == "first_half_aborted":  # every tau present, stream ended early
        return _subset(ks, shot < shot.max() / 2, last_flag_seen=False, n_acquisitions=0)
    if name == "one_tau_only":
        return _subset(ks, ks.tau == 0)
    raise KeyError(name)


@pytest.mark.parametrize("name, message", [
    ("all_zero", "k-space is all zero"),
    ("one_3e38_sample", "magnitude 3e\\+38.*corrupt data"),
    ("nan_sample", "NaN/Inf"),
    ("first_half_aborted", None),
    ("one_tau_only", "only 1 of 4 T2-prep durations"),
])
@pytest.mark.parametrize("chain", ["summit", "baseline"])
def test_silent_failure_inputs_get_a_clear_error(scan, name, message, chain):
    ks = _variant(scan, name)
    cfg = FAST if chain == "summit" else SubspaceConfig(admm_iters=1, coil_refine_iters=0)
    if name == "first_half_aborted":
        # with the calibration-free initialisation both methods reconstruct from what arrived, and say so
        out = reconstruct(ks, chain, cfg)
        assert any("scan incomplete" in w for w in out.info["warnings"])
        assert all(np.isfinite(v).all() for v in out.maps.values()) and out.mask.any()
        return
    with pytest.raises(ReconstructionError, match=message) as info:
        reconstruct(ks, chain, cfg)
    assert "\n" not in str(info.value)


def test_truncated_scan_warning_reaches_the_maps(scan):
    shot = np.asarray(scan.meta["shot"])
    ks = _subset(scan, shot < shot.max(), last_flag_seen=False, n_acquisitions=123)
    out = reconstruct(ks, "summit", FAST)
    assert any("scan incomplete" in w and "123 acquisitions" in w for w in out.info["warnings"])
    assert all(np.isfinite(v).all() for v in out.maps.values())


def test_output_guards():
    z = np.zeros((2, 3, 3), np.float32)
    with pytest.raises(ReconstructionError, match="output mask is empty"):
        check_maps(QuantMaps({"A": z}, mask=z > 0), "m")
    t1 = z.copy()
    t1[1, 2, 0] = np.inf
    with pytest.raises(ReconstructionError, match="T1 has 1 non-finite"):
        check_maps(QuantMaps({"A": z + 1, "T1": t1}, mask=z == 0), "m")
    with pytest.raises(ReconstructionError, match="amplitude map is 0"):
        check_maps(QuantMaps({"A": z}, mask=z == 0), "m")


def test_empty_support_names_the_cause(scan):
    with pytest.raises(ReconstructionError, match="empty support mask.*R = "):
        check_support(np.zeros((2, 2, 2), bool), scan)


@pytest.mark.parametrize("changes, message", [
    ({"epochs": -1}, "epochs=-1 must be an integer >= 0"),
    ({"lr": 0.0}, "lr=0.0 must be > 0"),
    ({"batch_x": 0}, "batch_x=0"),
    ({"rank": 99}, "rank=99 must be <= the 8 readouts"),
    ({"wnnm_window": 6}, "wnnm_window=6 must be odd"),
    ({"wnnm_similar": 50}, "wnnm_similar=50 must be <= wnnm_window"),
    ({"lambda_t2": -0.1}, "lambda_t2=-0.1 must be >= 0"),
    ({"lr_gamma": 2.0}, "lr_gamma=2.0 must be in"),
    ({"map_grid": HashGridConfig(n_levels=0)}, "map_grid.n_levels=0"),
    ({"coil_mode": "bogus"}, "coil_mode='bogus' is not allowed; use one of: inr, jsense, ratio"),
])
def test_impossible_summit_settings_fail_before_any_work(scan, changes, message, monkeypatch):
    import qmapinr.recon.methods.summit.solver as solver

    def no_work(*a, **k):
        raise AssertionError("prepare ran before the settings were checked")

    monkeypatch.setattr(solver, "prepare", no_work)
    with pytest.raises(ConfigError, match=message):
        solver.summit_recon(scan, dataclasses.replace(SummitConfig(), **changes))


def test_all_problems_in_one_message(scan):
    with pytest.raises(ConfigError, match="epochs=-2.*lr=-1"):
        validate(SummitConfig(epochs=-2, lr=-1.0), scan)


def test_baseline_settings_are_checked(scan):
    with pytest.raises(ConfigError, match="rho=0.0 must be > 0.*t1_max_ms=50.0 must be > t1_min_ms"):
        validate(SubspaceConfig(rho=0.0, t1_max_ms=50.0), scan)
    with pytest.raises(ConfigError, match="coil_method='espirit' is not allowed"):
        validate(SubspaceConfig(coil_method="espirit"), scan)


def test_wnnm_patch_clipped_to_a_thin_slab_and_validate_is_idempotent(scan):
    cfg, warnings = validate(SummitConfig(batch_x=64), scan)  # (nz, ny) = (4, 16), default patch 5
    assert cfg.wnnm_patch == 4 and cfg.batch_x == 16
    assert len(warnings) == 1 and "WNNM uses 4x4 patches" in warnings[0]
    again, more = validate(cfg, scan)
    assert again == cfg and more == []
    off, quiet = validate(SummitConfig(lambda_a=0, lambda_t1_phase=0, lambda_t2=0), scan)
    assert off.wnnm_patch == 5 and quiet == []  # WNNM off: nothing to clip


def test_maps_at_the_model_bound_are_flagged_not_silent():
    mask = np.ones((2, 4, 4), bool)
    t2s = np.full((2, 4, 4), 50.0, np.float32)
    t2s[0] = 3000.0  # half the mask at the T2* bound of the heads
    qm = QuantMaps(maps={"A": np.ones_like(t2s), "T2star": t2s}, mask=mask)
    check_maps(qm, "summit")
    assert any("T2star is at its model bound" in w for w in qm.info["warnings"])
    ok = QuantMaps(maps={"A": np.ones_like(t2s), "T2star": np.full_like(t2s, 50.0)}, mask=mask)
    check_maps(ok, "summit")
    assert not ok.info.get("warnings")
