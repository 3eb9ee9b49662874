"""Brain and NIST-like phantoms: labels, truth values (docs/phantoms.md, NIST CSV), shapes, seeding; coil maps."""

import numpy as np
import pytest

from qmapinr.recon.sim.coils import coil_sensitivities
from qmapinr.recon.sim.phantom import brain_phantom, nist_phantom, nist_reference

# docs/phantoms.md (typed here, not imported, so a wrong table in the code fails)
PHANTOMS_MD = {
    "WM": {"T1": 832.0, "T2": 79.2, "T2star": 53.2, "A": 0.65, "chi": -0.030},
    "GM": {"T1": 1331.0, "T2": 110.0, "T2star": 66.0, "A": 0.78, "chi": 0.020},
    "CSF": {"T1": 4470.0, "T2": 2030.0, "T2star": 1000.0, "A": 0.97, "chi": 0.019},
}
DEEP_CHI = {"caudate": 0.044, "putamen": 0.038, "globus_pallidus": 0.131}


@pytest.mark.parametrize("shape", [(8, 32, 32), (16, 64, 64)])
def test_brain_labels_and_values(shape):
    ph = brain_phantom(shape, seed=0)
    assert ph.labels.shape == shape and ph.mask.shape == shape and ph.mask.dtype == bool
    assert np.array_equal(ph.mask, ph.labels > 0)
    for key in ("A", "T1", "T2", "T2star", "chi", "B0", "Phase0"):
        assert ph.maps[key].shape == shape and ph.maps[key].dtype == np.float32
        assert np.isfinite(ph.maps[key]).all()
    names = set(ph.label_names.values())
    assert {"CSF", "GM", "WM", "ventricles", "caudate", "putamen", "globus_pallidus", "lesion"} <= names
    for lab, name in ph.label_names.items():
        if lab == 0:
            continue
        sel = ph.labels == lab
        assert sel.sum() >= 8, f"{name} has only {sel.sum()} voxels at {shape}"
        for key in ("A", "T1", "T2", "T2star", "chi"):
            vals = ph.maps[key][sel]
            assert np.all(vals == np.float32(ph.tissues[name][key]))
    for name, ref in PHANTOMS_MD.items():
        sel = ph.labels == ph.label_of(name)
        for key, v in ref.items():
            assert ph.maps[key][sel] == pytest.approx(v, rel=1e-6), (name, key)
    for name, chi in DEEP_CHI.items():
        assert ph.tissues[name]["chi"] == pytest.approx(chi)
    assert np.all(ph.maps["A"][~ph.mask] == 0) and np.all(ph.maps["T1"][~ph.mask] == 0)
    qm = ph.as_quant_maps()
    assert np.array_equal(qm.maps["QSM"], ph.maps["chi"])
    assert set(qm.maps) >= {"T1", "T2", "T2star", "A", "B0"}
    # tissue fractions: WM the largest compartment, GM a shell around it, CSF rim outside
    counts = {n: int((ph.labels == ph.label_of(n)).sum()) for n in ("WM", "GM", "CSF")}
    assert counts["WM"] > counts["GM"] > 0.3 * counts["WM"] and counts["CSF"] > 0


def test_deep_grey_matter_distinct_from_wm_and_gm():
    t = brain_phantom((8, 32, 32), seed=0).tissues
    for name in ("caudate", "putamen", "globus_pallidus", "lesion"):
        for ref in ("WM", "GM"):
            for key in ("T1", "T2", "T2star"):
                rel = abs(t[name][key] - t[ref][key]) / t[ref][key]
                assert rel >= 0.10, f"{name} {key} too close to {ref}"
        assert t[name]["T2star"] < t[name]["T2"]


def test_brain_is_seeded():
    a, b, c = brain_phantom((8, 32, 32), 4), brain_phantom((8, 32, 32), 4), brain_phantom((8, 32, 32), 5)
    for k in a.maps:
        assert np.array_equal(a.maps[k], b.maps[k])
    assert np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.maps["B0"], c.maps["B0"])
    assert not np.array_equal(a.maps["Phase0"], c.maps["Phase0"])
    assert not np.array_equal(a.labels, c.labels)  # cortical folding


def test_nist_truth_from_csv():
    rows = nist_reference("v1")
    assert len(rows) == 28
    t2_7 = next(r for r in rows if r["array"] == "T2" and r["sphere"] == 7)
    assert t2_7["T1_ms"] == 752.2 and t2_7["T2_ms"] == 91.76  # CSV row v1 T2(MnCl2) 7
    ph = nist_phantom((8, 32, 32), seed=0)
    assert ph.tissues["T2-07"]["T1"] == 752.2 and ph.tissues["T2-07"]["T2"] == 91.76
    assert ph.tissues["T1-03"]["T1"] == 984.1 and ph.tissues["T1-03"]["T2"] == 717.9
    spheres = [n for lab, n in ph.label_names.items() if lab >= 2]
    assert len(spheres) == 12
    for name in spheres:
        tr = ph.tissues[name]
        assert tr["T2star"] == pytest.approx(1.0 / (1.0 / tr["T2"] + 1.0 / 100.0))
        assert tr["T2star"] < tr["T2"]
        sel = ph.labels == ph.label_of(name)
        assert sel.sum() >= 20
        for key in ("T1", "T2", "T2star", "A"):
            assert ph.maps[key][sel].mean() == pytest.approx(tr[key], rel=1e-6)
        # every sphere is in the central slab only (fill above/below)
        zs = np.nonzero(sel.any(axis=(1, 2)))[0]
        assert zs.min() > 0 and zs.max() < 7
    assert np.array_equal(ph.mask, ph.labels > 0)


def test_small_shapes_work():
    for f in (brain_phantom, nist_phantom):
        ph = f((4, 16, 16), seed=1)
        assert ph.mask.sum() > 100 and np.isfinite(ph.maps["B0"]).all()


@pytest.mark.parametrize("ncoils", [1, 4, 24])
def test_coil_maps_normalised_smooth_distinct(ncoils):
    shape = (8, 32, 32)
    s = coil_sensitivities(ncoils, shape, seed=0, voxel_mm=(6.9, 6.9, 4.0))
    assert s.shape == (ncoils,) + shape and s.dtype == np.complex64
    rss = np.sqrt((np.abs(s) ** 2).sum(axis=0))
    assert np.allclose(rss, 1.0, atol=1e-5)
    # smooth: neighbouring voxels differ little
    for ax in (1, 2, 3):
        assert np.abs(np.diff(s, axis=ax)).max() < 0.2
    if ncoils > 1:
        peaks = {np.unravel_index(np.argmax(np.abs(c)), shape) for c in s}
        assert len(peaks) == ncoils or ncoils > 8  # each coil sees its own region
        assert np.abs(s[0]).max() > 2 * np.abs(s[0]).min()  # spatial fall-off
    assert np.array_equal(s, coil_sensitivities(ncoils, shape, seed=0, voxel_mm=(6.9, 6.9, 4.0)))
