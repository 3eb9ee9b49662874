"""Variable-density sampling: exact R, per-n random subsets, per-tau independence, density, seeding, order."""

import numpy as np
import pytest

from qmapinr.recon.sim.sampling import gaussian_density, vd_gaussian_lines


@pytest.mark.parametrize(
    ("ny", "nz", "R"), [(32, 8, 4.0), (64, 16, 8.0), (16, 4, 2.0), (30, 7, 3.3), (8, 2, 1.0)]
)
def test_acceleration_exact_and_lines_distinct(ny, nz, R):
    lines = vd_gaussian_lines(ny, nz, ntau=3, nseg=8, R=R, seed=0)
    nsel = round(ny * nz / R)
    assert lines.nlines == 3 * nsel
    for t in range(3):
        sel = lines.tau == t
        assert sel.sum() == nsel
        flat = lines.kz[sel] * ny + lines.ky[sel]
        assert np.unique(flat).size == nsel  # drawn without replacement
    assert lines.acceleration == pytest.approx(ny * nz / nsel)
    if (ny * nz) % R == 0:
        assert lines.acceleration == R
    assert lines.ky.min() >= 0 and lines.ky.max() < ny and lines.kz.min() >= 0 and lines.kz.max() < nz
    assert lines.mask().sum() == lines.nlines


def test_every_n_sees_a_different_random_subset():
    ny, nz, nseg = 32, 8, 16
    lines = vd_gaussian_lines(ny, nz, ntau=2, nseg=nseg, R=2.0, seed=3)  # 128 lines per tau, 8 per n
    sel = lines.tau == 0
    subsets = [
        set((lines.kz[sel & (lines.seg == n)] * ny + lines.ky[sel & (lines.seg == n)]).tolist())
        for n in range(nseg)
    ]
    assert all(len(s) == 8 for s in subsets)
    for a in range(nseg):  # disjoint within a tau, so every n gets other lines
        for b in range(a + 1, nseg):
            assert not subsets[a] & subsets[b]
    # the subsets are random, not structured by distance from the centre: every n reaches beyond the calib
    # region and the mean |dky| per n varies
    dky = [np.mean([abs(f % ny - ny // 2) for f in s]) for s in subsets]
    assert min(max(abs(f % ny - ny // 2) for f in s) for s in subsets) > 1
    assert np.std(dky) > 0.3
    # the k-space centre line lands at different n for different seeds
    centre = (nz // 2) * ny + ny // 2
    ns = set()
    for seed in range(8):
        ln = vd_gaussian_lines(ny, nz, ntau=1, nseg=nseg, R=2.0, seed=seed)
        ns.add(int(ln.seg[(ln.kz * ny + ln.ky) == centre][0]))
    assert len(ns) >= 3


def test_patterns_differ_between_tau():
    ny, nz = 32, 8
    lines = vd_gaussian_lines(ny, nz, ntau=4, nseg=8, R=4.0, seed=0)
    pats = [set((lines.kz[lines.tau == t] * ny + lines.ky[lines.tau == t]).tolist()) for t in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert pats[a] != pats[b]
            assert len(pats[a] & pats[b]) < len(pats[a])


def test_density_higher_at_centre_and_calibration_full():
    ny, nz = 64, 16
    m = np.zeros((nz, ny))
    for seed in range(5):
        lines = vd_gaussian_lines(ny, nz, ntau=4, nseg=16, R=4.0, seed=seed)
        mask = lines.mask().any(axis=1)  # (ntau, nz, ny)
        m += mask.sum(axis=0)
        assert mask[:, nz // 2 - 1 : nz // 2 + 2, ny // 2 - 1 : ny // 2 + 2].all()  # 3x3 calibration centre
    m /= 20.0
    dky = np.abs(np.arange(ny) - ny // 2)[None, :]
    dkz = np.abs(np.arange(nz) - nz // 2)[:, None]
    centre = (dky < ny / 8) & (dkz < nz / 8)
    outer = (dky > 3 * ny / 8) | (dkz > 3 * nz / 8)
    assert m[centre].mean() > 0.6
    assert m[outer].mean() < 0.15
    assert m[centre].mean() > 4 * m[outer].mean()
    d = gaussian_density(ny, nz)
    assert d[nz // 2, ny // 2] == 1.0 and d.min() > 0


def test_seeded_reproducibility():
    a = vd_gaussian_lines(32, 8, 4, 16, 4.0, seed=11)
    b = vd_gaussian_lines(32, 8, 4, 16, 4.0, seed=11)
    c = vd_gaussian_lines(32, 8, 4, 16, 4.0, seed=12)
    for k in ("ky", "kz", "seg", "tau", "shot"):
        assert np.array_equal(getattr(a, k), getattr(b, k))
    assert not (np.array_equal(a.ky, c.ky) and np.array_equal(a.kz, c.kz))


def test_acquisition_order_and_partial_last_shot():
    ny, nz, ntau, nseg = 20, 5, 3, 8  # 50 lines per tau -> 6 full shots + one of 2 readouts
    so = vd_gaussian_lines(ny, nz, ntau, nseg, R=2.0, seed=0, order="shot-outer")
    to = vd_gaussian_lines(ny, nz, ntau, nseg, R=2.0, seed=0, order="tau-outer")
    for lines in (so, to):
        assert np.all(np.diff(lines.shot) >= 0)  # shots in acquisition order
        for s in np.unique(lines.shot):
            sel = lines.shot == s
            assert np.unique(lines.tau[sel]).size == 1  # one preparation = one tau
            assert np.array_equal(lines.seg[sel], np.arange(sel.sum()))  # readouts in n order
        sizes = np.bincount(lines.shot)
        assert sorted(sizes.tolist()) == [2] * ntau + [nseg] * (6 * ntau)
    assert np.array_equal(so.tau[so.seg == 0][:6], [0, 1, 2, 0, 1, 2])  # shot-outer cycles through tau
    assert np.all(np.diff(to.tau) >= 0)  # tau-outer: all of tau 0 first
    # same patterns and n assignment, only the order differs
    def key(ln):
        return sorted(zip(ln.tau.tolist(), ln.seg.tolist(), ln.kz.tolist(), ln.ky.tolist(), strict=True))

    assert key(so) == key(to)


def test_bad_arguments():
    with pytest.raises(ValueError, match="order"):
        vd_gaussian_lines(8, 4, 2, 4, 2.0, 0, order="random")
    with pytest.raises(ValueError, match="R="):
        vd_gaussian_lines(8, 4, 2, 4, 0.5, 0)


def test_calibration_free_sampling_has_no_forced_centre():
    """calib=(0, 0): pure variable-density Gaussian; at R = 8 the 3x3 centre is not fully sampled for some tau."""
    ny, nz, ntau = 32, 8, 4
    centre = {(z, y) for z in range(nz // 2 - 1, nz // 2 + 2) for y in range(ny // 2 - 1, ny // 2 + 2)}
    free = vd_gaussian_lines(ny, nz, ntau=ntau, nseg=32, R=8.0, seed=5, calib=(0, 0))
    calib = vd_gaussian_lines(ny, nz, ntau=ntau, nseg=32, R=8.0, seed=5)
    assert free.nlines == calib.nlines == ntau * 32

    def covered(lines, t):
        sel = lines.tau == t
        return centre <= set(zip(lines.kz[sel].tolist(), lines.ky[sel].tolist(), strict=True))

    assert all(covered(calib, t) for t in range(ntau))
    assert not all(covered(free, t) for t in range(ntau))
    # the same seed gives the same pattern; the pattern is still centre-weighted (density, not a block)
    again = vd_gaussian_lines(ny, nz, ntau=ntau, nseg=32, R=8.0, seed=5, calib=(0, 0))
    assert np.array_equal(free.ky, again.ky) and np.array_equal(free.kz, again.kz)
    d = np.hypot((free.ky - ny // 2) / ny, (free.kz - nz // 2) / nz)
    assert np.mean(d) < np.mean(np.hypot(*np.meshgrid((np.arange(ny) - ny // 2) / ny, (np.arange(nz) - nz // 2) / nz)))
    with pytest.raises(ValueError, match="calib"):
        vd_gaussian_lines(ny, nz, ntau=1, nseg=8, R=4.0, seed=0, calib=(-1, 3))
