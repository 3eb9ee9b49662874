"""add_qsm (registry): QSM + LocalField on a usable volume, a stated reason (sent as TEXT) when impossible."""

from __future__ import annotations

import numpy as np
from synthetic import tiny_dataset

from qmapinr.gadgets import chains
from qmapinr.recon.kspace import QuantMaps
from qmapinr.recon.methods.registry import add_qsm


def test_add_qsm_records_reason_for_tiny_volume():
    tiny = tiny_dataset()  # 8 slices of 16 x 14: the brain mask is below the pipeline's minimum
    mask = np.zeros(tiny.mask.shape, bool)
    mask[3:5, 6:8, 7:9] = True
    qm = QuantMaps(maps={"B0": np.zeros(mask.shape, np.float32), "A": mask.astype(np.float32)}, mask=mask)
    out = add_qsm(qm, tiny.kspace)
    assert "QSM" not in out.maps and "LocalField" not in out.maps
    assert out.info["qsm_unavailable"].startswith("QSM not computed")


def test_add_qsm_adds_qsm_and_local_field():
    tiny = tiny_dataset(matrix=(24, 24, 12))
    b0 = np.asarray(tiny.maps["B0"], np.float32)
    qm = QuantMaps(maps={"B0": b0, "A": tiny.mask.astype(np.float32)}, mask=tiny.mask.copy())
    out = add_qsm(qm, tiny.kspace)
    assert "qsm_unavailable" not in out.info, out.info.get("qsm_unavailable")
    assert out.maps["QSM"].shape == b0.shape and out.maps["LocalField"].shape == b0.shape
    q = out.info["qsm"]
    assert q["alpha"] > 0 and q["alpha_rule"] and q["mask_voxels"] < tiny.mask.sum()
    # a linear field (15 Hz * y) is pure background: the local field and chi are ~0
    assert np.abs(out.maps["LocalField"]).max() < 0.5


def test_reconstruct_stage_sends_the_reason_as_text(monkeypatch):
    tiny = tiny_dataset()
    reason = "QSM not computed: brain mask has 3 voxels (< 64)"

    def fake(kspace, chain, cfg, progress=None):
        return QuantMaps(maps={}, info={"qsm_unavailable": reason})

    monkeypatch.setattr(chains, "reconstruct", fake)
    out = list(chains.reconstruct_stage([tiny.kspace], None, "summit", None))
    assert isinstance(out[0], QuantMaps) and out[1] == reason
