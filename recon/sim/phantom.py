"""Numerical 3-D phantoms with ground truth T1, T2, T2*, A (proton density / water fraction), chi, B0, Phase0.

Geometry is defined in *normalised index coordinates*: x and y run over [-1, 1) across the in-plane field of
view, z over [-1, 1) across the slab (the simulated volume is a slab through the object, z being the
thick-slice direction). Structures are therefore ellipsoids in index space and keep their place for any matrix
size; they are resolved from about (8, 32, 32) upwards. Maps are piecewise constant per label (exact
sphere/tissue means), float32 ``(nz, ny, nx)``; outside the object every map except B0 and Phase0 is 0.

B0 (Hz) = dipole field (:func:`dipole_field_hz`) of the slab's own chi, chi = 0 outside the object + a seeded
linear shim residual; for the brain also the field of an air cavity outside the slab
(:func:`~qmapinr.recon.sim.field.external_field_hz`, a sinus-like background field from outside the brain).
Phase0 = a seeded smooth low-order phase. The brain's chi per tissue comes from ``data/brain_chi.csv`` (with a
source column: QSM challenge 2.0 values).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from qmapinr.recon.kspace import QuantMaps
from qmapinr.recon.sim.field import (
    background_field_hz,
    dipole_field_hz,
    external_field_hz,
    normalised_coords,
    smooth_phase,
)

TISSUE_KEYS = ("A", "T1", "T2", "T2star", "chi")
MAP_KEYS = TISSUE_KEYS + ("B0", "Phase0")

# Brain tissue values (docs/phantoms.md): WM/GM T1, T2 [W], T2* [W*], CSF T1 [R], T2 [Sp], water fractions [E],
# chi [Q] (read from data/brain_chi.csv below, which cites each value). CSF T2* is not tabulated: 1000 ms
# (T2-limited) as docs/phantoms.md suggests. Deep grey matter and the lesion: chi from [Q] (lesion 0); their
# T1/T2/T2*/A are illustrative choices made clearly distinct from WM and GM (iron-rich globus pallidus short,
# lesion long), not literature values. Vessel (a vein along the slab): chi of venous blood [Q]; T1 1650 ms of
# blood at 3 T (Lu et al., MRM 2004;52:679, Hct 0.42); T2 50 ms of venous blood (Y ~ 0.6-0.7, Zhao et al.,
# MRM 2007;58:592); T2* 20 ms and A 0.85 illustrative.
BRAIN_TISSUES: dict[str, dict[str, float]] = {
    "CSF": {"A": 0.97, "T1": 4470.0, "T2": 2030.0, "T2star": 1000.0, "chi": 0.019},
    "GM": {"A": 0.78, "T1": 1331.0, "T2": 110.0, "T2star": 66.0, "chi": 0.020},
    "WM": {"A": 0.65, "T1": 832.0, "T2": 79.2, "T2star": 53.2, "chi": -0.030},
    "ventricles": {"A": 0.97, "T1": 4470.0, "T2": 2030.0, "T2star": 1000.0, "chi": 0.019},
    "caudate": {"A": 0.80, "T1": 1150.0, "T2": 90.0, "T2star": 42.0, "chi": 0.044},
    "putamen": {"A": 0.78, "T1": 1000.0, "T2": 68.0, "T2star": 32.0, "chi": 0.038},
    "globus_pallidus": {"A": 0.72, "T1": 700.0, "T2": 52.0, "T2star": 18.0, "chi": 0.131},
    "lesion": {"A": 0.85, "T1": 1600.0, "T2": 160.0, "T2star": 90.0, "chi": 0.0},
    "vessel": {"A": 0.85, "T1": 1650.0, "T2": 50.0, "T2star": 20.0, "chi": 0.190},
}
BRAIN_LABELS: dict[int, str] = {0: "background", **{i + 1: n for i, n in enumerate(BRAIN_TISSUES)}}
BRAIN_CHI_CSV = "brain_chi.csv"


def brain_chi_table() -> dict[str, tuple[float, str]]:
    """tissue -> (chi in ppm, source) from the packaged ``data/brain_chi.csv``."""
    text = resources.files("qmapinr.recon.sim").joinpath("data", BRAIN_CHI_CSV).read_text(encoding="utf-8")
    rows = [r for r in csv.reader(io.StringIO(text)) if r and not r[0].startswith("#")]
    head, body = rows[0], rows[1:]
    if head != ["tissue", "chi_ppm", "source"]:
        raise ValueError(f"{BRAIN_CHI_CSV}: unexpected header {head}")
    return {r[0]: (float(r[1]), r[2]) for r in body}


for _name, (_chi, _src) in brain_chi_table().items():  # one source of truth for chi: the cited table
    BRAIN_TISSUES[_name]["chi"] = _chi

NIST_CSV = "nist_system_phantom_3T_20C.csv"
NIST_T2_PRIME_MS = 100.0
NIST_FILL = {"A": 1.0, "T1": 2400.0, "T2": 1000.0, "chi": 0.0}
# Curie-law room-temperature molar susceptibilities (CGS, cm^3/mol): Mn2+ (mu_eff 5.9 mu_B) ~ 14.9e-3,
# Ni2+ (mu_eff 3.2 mu_B) ~ 4.4e-3; chi_SI per mM = 4 pi chi_mol 1e-6 -> ppm per mM below (approximate).
NIST_CHI_PPM_PER_MM = {"T1": 0.055, "T2": 0.187}
NIST_OUTER = ("T2", (4, 5, 6, 7, 8, 9, 10, 11))  # T2 267 ... 19.8 ms
NIST_INNER = ("T1", (3, 5, 7, 9))  # T1 984, 497, 247, 126 ms


@dataclass
class Phantom:
    """Ground truth of one simulated object.

    Attributes
    ----------
    labels : int16 ``(nz, ny, nx)``, 0 = background.
    label_names : label value -> name.
    maps : name -> float32 ``(nz, ny, nx)``: 'A' (a.u.), 'T1', 'T2', 'T2star' (ms), 'chi' (ppm), 'B0' (Hz),
        'Phase0' (rad).
    mask : bool ``(nz, ny, nx)``, the object (labels > 0).
    tissues : label name -> its constant truth values ('A', 'T1', 'T2', 'T2star', 'chi', and for NIST spheres
        'conc_mM', 'T1_unc_ms', 'T2_unc_ms').
    sens : complex64 ``(coils, nz, ny, nx)`` coil sensitivities used by the simulation, or None.
    info : kind, seed, voxel size, field strength, choices made.
    """

    labels: np.ndarray
    label_names: dict[int, str]
    maps: dict[str, np.ndarray]
    mask: np.ndarray
    tissues: dict[str, dict[str, float]] = field(default_factory=dict)
    sens: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.labels.shape)  # type: ignore[return-value]

    def label_of(self, name: str) -> int:
        """Label value of a tissue / sphere name."""
        for k, v in self.label_names.items():
            if v == name:
                return k
        raise KeyError(f"no label named {name!r}; known: {sorted(self.label_names.values())}")

    def as_quant_maps(self) -> QuantMaps:
        """The truth as :class:`QuantMaps` (chi is called 'QSM' there)."""
        names = {
            "A": "A",
            "T1": "T1",
            "T2": "T2",
            "T2star": "T2star",
            "B0": "B0",
            "Phase0": "Phase0",
            "chi": "QSM",
        }
        return QuantMaps(
            maps={names[k]: v for k, v in self.maps.items()},
            mask=self.mask,
            info={"truth": True, **self.info},
        )


def _default_voxel(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    nz, ny, nx = shape
    return (220.0 / nx, 220.0 / ny, 4.0)


def _ellipsoid(coords, centre, semi) -> np.ndarray:
    """bool mask of ``sum ((u - c) / s)^2 <= 1`` over normalised coords; centre/semi in (x, y, z)."""
    z, y, x = coords
    return (
        ((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2 + ((z - centre[2]) / semi[2]) ** 2
    ) <= 1.0


def _fill_maps(
    labels: np.ndarray,
    label_names: dict[int, str],
    tissues: dict[str, dict[str, float]],
    rng: np.random.Generator,
    voxel_mm,
    b0_t: float,
    b0_dir,
    background_hz: float,
    phase_rad: float,
    extra_hz: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    maps = {k: np.zeros(labels.shape, dtype=np.float32) for k in TISSUE_KEYS}
    for lab, name in label_names.items():
        if lab == 0:
            continue
        sel = labels == lab
        for k in TISSUE_KEYS:
            maps[k][sel] = tissues[name][k]
    maps["B0"] = (
        dipole_field_hz(maps["chi"], voxel_mm, b0_t=b0_t, b0_dir=b0_dir)
        + background_field_hz(labels.shape, rng, background_hz)
        + (0.0 if extra_hz is None else extra_hz)
    ).astype(np.float32)
    maps["Phase0"] = smooth_phase(labels.shape, rng, phase_rad)
    return maps


def brain_phantom(
    shape: tuple[int, int, int] = (16, 64, 64),
    seed: int = 0,
    voxel_mm: tuple[float, float, float] | None = None,
    b0_t: float = 3.0,
    b0_dir: tuple[float, float, float] = (0.0, 0.0, 1.0),
    background_hz: float = 10.0,
    phase_rad: float = 1.0,
    cavity: bool = True,
) -> Phantom:
    """Brain-like slab: ellipsoidal head, CSF rim, folded GM cortex, WM, ventricles, deep GM, one lesion.

    Tissue values: :data:`BRAIN_TISSUES` (WM, GM, CSF from docs/phantoms.md; deep GM T1/T2/T2* illustrative).
    Bilateral caudate, putamen and globus pallidus; one unilateral 'lesion' in WM; one 'vessel' (a vein
    running through the slab in the posterior midline, venous-blood chi 0.19 ppm). The seed sets the cortical
    folding (a random angular modulation of the GM/WM boundary), the linear background field and the smooth
    Phase0.

    Parameters
    ----------
    shape : (nz, ny, nx); z is the slab (thick-voxel) direction.
    seed : random seed.
    voxel_mm : (x, y, z) voxel size for the dipole field; default (220/nx, 220/ny, 4) mm.
    b0_t, b0_dir : field strength (T) and (x, y, z) direction.
    background_hz : amplitude of the linear shim-residual field (see :func:`background_field_hz`).
    phase_rad : amplitude of the smooth Phase0 variation (see :func:`smooth_phase`).
    cavity : add the background field of an air cavity outside the slab (:func:`external_field_hz`).
    """
    rng = np.random.default_rng(seed)
    voxel_mm = voxel_mm or _default_voxel(shape)
    coords = normalised_coords(shape)
    z, y, x = coords
    r = np.sqrt((x / 0.80) ** 2 + (y / 0.90) ** 2 + (z / 2.2) ** 2)
    theta = np.arctan2(y, x)
    k1, k2 = rng.integers(5, 9, size=2)
    p1, p2 = rng.uniform(0, 2 * np.pi, size=2)
    wm_edge = 0.74 + 0.02 * np.sin(k1 * theta + p1) + 0.015 * np.sin(k2 * theta + p2 + 3.0 * z)
    ids = {n: k for k, n in BRAIN_LABELS.items()}
    labels = np.zeros(shape, dtype=np.int16)
    labels[r <= 1.0] = ids["CSF"]
    labels[r <= 0.90] = ids["GM"]
    labels[r <= wm_edge] = ids["WM"]
    for sx in (-1.0, 1.0):
        labels[_ellipsoid(coords, (sx * 0.11, 0.08, 0.0), (0.07, 0.26, 0.9))] = ids["ventricles"]
        labels[_ellipsoid(coords, (sx * 0.27, 0.24, 0.1), (0.08, 0.12, 0.6))] = ids["caudate"]
        labels[_ellipsoid(coords, (sx * 0.44, 0.0, 0.0), (0.08, 0.18, 0.55))] = ids["putamen"]
        labels[_ellipsoid(coords, (sx * 0.30, -0.04, -0.05), (0.06, 0.10, 0.45))] = ids["globus_pallidus"]
    labels[_ellipsoid(coords, (0.20, -0.40, 0.2), (0.09, 0.09, 0.4))] = ids["lesion"]
    labels[_ellipsoid(coords, (0.0, -0.58, 0.0), (0.06, 0.06, 4.0)) & (labels > 0)] = ids["vessel"]
    tissues = {n: dict(v) for n, v in BRAIN_TISSUES.items()}
    extra = external_field_hz(shape, tuple(voxel_mm), b0_t=b0_t, b0_dir=b0_dir) if cavity else None
    maps = _fill_maps(labels, BRAIN_LABELS, tissues, rng, voxel_mm, b0_t, b0_dir, background_hz, phase_rad,
                      extra_hz=extra)
    return Phantom(
        labels=labels,
        label_names=dict(BRAIN_LABELS),
        maps=maps,
        mask=labels > 0,
        tissues=tissues,
        info={
            "kind": "brain",
            "seed": seed,
            "voxel_mm": tuple(voxel_mm),
            "b0_t": b0_t,
            "b0_dir": tuple(b0_dir),
            "cavity": bool(cavity),
        },
    )


def nist_reference(version: str = "v1") -> list[dict[str, float | str]]:
    """Rows of the packaged NIST/CaliberMRI model-130 table (3 T, 20 C) for one phantom version.

    Each row: 'array' ('T1' or 'T2'), 'sphere' (int), 'conc_mM', 'T1_ms', 'T1_unc_ms', 'T2_ms', 'T2_unc_ms'.
    """
    text = resources.files("qmapinr.recon.sim").joinpath("data", NIST_CSV).read_text(encoding="utf-8")
    rows = [r for r in csv.reader(io.StringIO(text)) if r and not r[0].lstrip('"').startswith("#")]
    head, body = rows[0], rows[1:]
    out = []
    for r in body:
        d = dict(zip(head, r, strict=True))
        if not d["phantom_version"].startswith(version):
            continue
        rec: dict[str, float | str] = {"array": d["array"].split("(")[0], "sphere": int(d["sphere"])}
        for k in ("conc_mM", "T1_ms", "T1_unc_ms", "T2_ms", "T2_unc_ms"):
            rec[k] = float(d[k])
        out.append(rec)
    if not out:
        raise ValueError(f"no rows for phantom version {version!r} in {NIST_CSV}")
    return out


def nist_phantom(
    shape: tuple[int, int, int] = (16, 64, 64),
    seed: int = 0,
    voxel_mm: tuple[float, float, float] | None = None,
    b0_t: float = 3.0,
    b0_dir: tuple[float, float, float] = (0.0, 0.0, 1.0),
    background_hz: float = 10.0,
    phase_rad: float = 1.0,
) -> Phantom:
    """NIST-like sphere phantom: 12 spheres of the ISMRM/NIST system phantom (model 130, v1, 3 T, 20 C).

    Layout: a cylindrical container (radius 0.88 of the half FOV, along z) of fill; an outer ring of 8
    T2-array spheres (sphere 4-11, T2 267-19.8 ms) at radius 0.62 and an inner ring of 4 T1-array spheres (3,
    5, 7, 9; T1 984-126 ms) at radius 0.27, all centred in the slab (z semi-axis 0.75 of the slab
    half-thickness). Labels: 0 background, 1 'fill', then 'T2-04' ... 'T2-11', 'T1-03' ... 'T1-09'.

    Truth per sphere (``tissues``): T1, T2 from the v1 rows of the packaged CSV; A = 1; T2* from
    ``1/T2* = 1/T2 + 1/T2'`` with T2' = 100 ms (an assumed, plausible reversible dephasing, so T2* < T2);
    chi from the concentration with a Curie-law estimate (0.187 ppm/mM MnCl2, 0.055 ppm/mM NiCl2;
    approximate). The fill (T1 2400 ms, T2 1000 ms, A 1, chi 0, same T2' rule) is an assumption, not from the
    reference tables. Spheres with T2 > ~400 ms or T1 < ~100 ms are poorly encoded by the protocols
    (docs/phantoms.md); none of the chosen spheres has T1 < 100 ms, T1-03 (T2 718 ms) is the one beyond the T2
    range.
    """
    rng = np.random.default_rng(seed)
    voxel_mm = voxel_mm or _default_voxel(shape)
    coords = normalised_coords(shape)
    z, y, x = coords
    ref = {(r["array"], r["sphere"]): r for r in nist_reference("v1")}
    labels = np.zeros(shape, dtype=np.int16)
    labels[np.broadcast_to(x**2 + y**2 <= 0.88**2, shape)] = 1
    label_names: dict[int, str] = {0: "background", 1: "fill"}
    fill = dict(NIST_FILL)
    fill["T2star"] = 1.0 / (1.0 / fill["T2"] + 1.0 / NIST_T2_PRIME_MS)
    tissues: dict[str, dict[str, float]] = {"fill": fill}
    placements = []
    for (array, spheres), ring, radius, phase in (
        (NIST_OUTER, 0.62, 0.15, 0.0),
        (NIST_INNER, 0.27, 0.12, 0.25),
    ):
        for i, s in enumerate(spheres):
            ang = 2 * np.pi * (i / len(spheres)) + phase * np.pi
            placements.append((array, s, (ring * np.cos(ang), ring * np.sin(ang), 0.0), radius))
    for lab, (array, s, centre, radius) in enumerate(placements, start=2):
        row = ref[(array, s)]
        name = f"{array}-{s:02d}"
        t2 = float(row["T2_ms"])
        tissues[name] = {
            "A": 1.0,
            "T1": float(row["T1_ms"]),
            "T2": t2,
            "T2star": 1.0 / (1.0 / t2 + 1.0 / NIST_T2_PRIME_MS),
            "chi": NIST_CHI_PPM_PER_MM[array] * float(row["conc_mM"]),
            "conc_mM": float(row["conc_mM"]),
            "T1_unc_ms": float(row["T1_unc_ms"]),
            "T2_unc_ms": float(row["T2_unc_ms"]),
        }
        label_names[lab] = name
        labels[_ellipsoid(coords, centre, (radius, radius, 0.75))] = lab
    maps = _fill_maps(labels, label_names, tissues, rng, voxel_mm, b0_t, b0_dir, background_hz, phase_rad)
    return Phantom(
        labels=labels,
        label_names=label_names,
        maps=maps,
        mask=labels > 0,
        tissues=tissues,
        info={
            "kind": "nist",
            "seed": seed,
            "voxel_mm": tuple(voxel_mm),
            "b0_t": b0_t,
            "b0_dir": tuple(b0_dir),
            "t2_prime_ms": NIST_T2_PRIME_MS,
            "version": "v1",
        },
    )
