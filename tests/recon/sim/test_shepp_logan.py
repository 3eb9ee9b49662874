"""MR Shepp-Logan head from phantominator (optional dependency) as a simulator phantom."""

import numpy as np
import pytest

pytest.importorskip("phantominator", reason="optional phantom package: pip install 'qmapinr[phantoms]'")

from qmapinr.recon.sim.shepp_logan import shepp_logan_phantom  # noqa: E402
from qmapinr.recon.sim.simulate import SimulationConfig, simulate  # noqa: E402


def test_shepp_logan_maps_and_labels():
    ph = shepp_logan_phantom((8, 32, 32), seed=1)
    assert ph.shape == (8, 32, 32) and ph.mask.any()
    names = set(ph.label_names.values())
    assert {"WM", "GM", "CSF"} <= names
    for k in ("A", "T1", "T2", "T2star", "chi", "B0", "Phase0"):
        assert ph.maps[k].shape == ph.shape and ph.maps[k].dtype == np.float32 and np.isfinite(ph.maps[k]).all()
    m = ph.mask
    assert (ph.maps["T1"][m] > 0).all() and (ph.maps["T2star"][m] <= ph.maps["T2"][m]).all()
    assert np.all(ph.maps["T1"][~m] == 0)
    # Gach 2008 values at 3 T (T1 = A B0^C): WM 0.583 * 3^0.382 s, GM 0.857 * 3^0.376 s, CSF 4.2 s
    assert ph.tissues["WM"]["T1"] == pytest.approx(583.0 * 3**0.382, rel=1e-4)
    assert ph.tissues["GM"]["T1"] == pytest.approx(857.0 * 3**0.376, rel=1e-4)
    assert ph.tissues["CSF"]["T2"] == pytest.approx(1990.0)
    assert np.array_equal(ph.labels, shepp_logan_phantom((8, 32, 32), seed=1).labels)


def test_simulate_with_shepp_logan():
    ks, ph = simulate(SimulationConfig(shape=(4, 16, 16), ncoils=2, nseg=8, R=4.0, phantom="shepp-logan"))
    assert ph.info["kind"] == "shepp-logan" and np.isfinite(ks.data).all() and np.abs(ks.data).max() > 0
