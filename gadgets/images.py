"""Parameter maps <-> MRD (ISMRMRD) images.

One 3-D single-channel float32 image per map. ``Image.data`` has the shape ismrmrd 1.15 uses for a 3-D
single-channel image, ``(1, nz, ny, nx)`` (``Image.from_array`` with ``transpose=False`` on a row-major
``(nz, ny, nx)`` array), and ``matrix_size`` is ``(nx, ny, nz)``.

Series indices are fixed per map (:data:`SERIES_INDEX`) so that a viewer or a downstream gadget can pick a map
by series; the meta attributes carry the name, unit and a robust display window.
"""

from __future__ import annotations

import logging

import ismrmrd
import ismrmrd.xsd as xsd
import numpy as np

from qmapinr.recon.kspace import MAP_UNITS, Geometry, QuantMaps

logger = logging.getLogger(__name__)

SERIES_INDEX: dict[str, int] = {
    "T1": 1, "T2": 2, "T2star": 3, "A": 4, "B0": 5, "Phase0": 6, "QSM": 7, "Residual": 8, "LocalField": 9,
}
"""Map name -> ``image_series_index`` (before ``series_offset``)."""

LRR_SERIES_BASE = 101
"""``image_series_index`` of LoREIN's LRR weighted-image series of echo ``e``: ``LRR_SERIES_BASE + e``."""

LRR_ROLE = "LRRSeries"
"""Meta ``DataRole`` of the LRR series images (not maps: :func:`mrd_images_to_maps` skips them)."""

QUANTITATIVE = frozenset({"T1", "T2", "T2star", "B0", "QSM", "LocalField"})
"""Maps with physical units: meta ``DataRole`` = ``Quantitative``; the others get ``Image``."""

WINDOW_PERCENTILES = (1.0, 99.0)
"""Robust display window: these percentiles of the finite values inside the mask."""

_DESCRIPTION = {
    "T1": "T1 map", "T2": "T2 map", "T2star": "T2* map", "A": "proton density (A)", "B0": "B0 off-resonance",
    "Phase0": "initial phase", "QSM": "susceptibility (QSM)", "Residual": "data-consistency residual",
    "LocalField": "local field (B0 after background removal)",
}


def robust_window(arr: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """(low, high) at :data:`WINDOW_PERCENTILES` of the finite values of ``arr`` inside ``mask``.

    Falls back to all finite values if the mask selects none, and to (0, 1) if there are none at all;
    ``high > low`` is guaranteed.
    """
    finite = np.isfinite(arr)
    sel = finite & mask if mask is not None and mask.shape == arr.shape else finite
    vals = arr[sel] if sel.any() else arr[finite]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(vals, WINDOW_PERCENTILES))
    if not hi > lo:
        pad = max(abs(lo) * 1e-3, 1e-6)
        lo, hi = lo - pad, hi + pad
    return lo, hi


def _recon_fov(header, shape_xyz: tuple[int, int, int], geometry: Geometry) -> tuple[float, float, float]:
    """FOV of a map of matrix ``shape_xyz``: the header's reconSpace if its matrix matches, else the
    geometry's (scaled if the geometry's matrix differs)."""
    if header is not None:
        if isinstance(header, bytes):
            header = header.rstrip(b"\x00").decode("utf-8")
        if isinstance(header, str):
            header = xsd.CreateFromDocument(header.rstrip("\x00"))
        space = header.encoding[0].reconSpace
        ms, fov = space.matrixSize, space.fieldOfView_mm
        if (int(ms.x), int(ms.y), int(ms.z)) == tuple(shape_xyz):
            return float(fov.x), float(fov.y), float(fov.z)
        logger.debug("reconSpace matrix (%d, %d, %d) differs from the map matrix %s; using the encoded FOV",
                     ms.x, ms.y, ms.z, shape_xyz)
    if tuple(geometry.matrix) != tuple(shape_xyz):
        scale = [m / g for m, g in zip(shape_xyz, geometry.matrix, strict=True)]
        return tuple(f * s for f, s in zip(geometry.fov_mm, scale, strict=True))  # type: ignore[return-value]
    return tuple(float(f) for f in geometry.fov_mm)  # type: ignore[return-value]


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def maps_to_mrd_images(
    qmaps: QuantMaps, geometry: Geometry, header=None, series_offset: int = 0
) -> list[ismrmrd.Image]:
    """One MRD image per map of ``qmaps``, in :data:`SERIES_INDEX` order.

    Parameters
    ----------
    qmaps : maps, each float32 ``(nz, ny, nx)``; ``qmaps.mask`` (bool ``(nz, ny, nx)`` or None) selects the
        voxels used for the display window.
    geometry : placement (position, read/phase/slice directions, table position, mm).
    header : ISMRMRD header (``xsd.ismrmrdHeader``, XML text or None) for ``reconSpace.fieldOfView_mm``.
    series_offset : added to every series index.

    Returns
    -------
    list of ``ismrmrd.Image``: float32 data ``(1, nz, ny, nx)``, ``image_type`` MAGNITUDE (PHASE for Phase0),
    ``image_index`` 1, meta keys MapName, Units, ImageComment, SeriesDescription (``qmapinr_<name>``),
    WindowCenter, WindowWidth, ImageProcessingHistory (``QMAPINR``), DataRole (``Quantitative``/``Image``),
    ImageRowDir / ImageColumnDir / ImageSliceNormDir. Non-finite voxels are written as 0 (warning; meta
    ``NonFiniteVoxels``). ``qmaps.info['warnings']`` (what the reconstruction adjusted or found missing, e.g. a
    truncated scan) becomes the meta ``Warning`` (one value per warning) of every image.
    """
    warnings = [str(w) for w in qmaps.info.get("warnings", [])]
    images = []
    names = sorted(qmaps.maps, key=lambda n: SERIES_INDEX[n])
    for name in names:
        arr = np.asarray(qmaps.maps[name], dtype=np.float32)
        nz, ny, nx = arr.shape
        finite = np.isfinite(arr)
        n_bad = int(arr.size - finite.sum())
        if n_bad:
            logger.warning("map %s has %d non-finite voxels; writing them as 0", name, n_bad)
            arr = np.where(finite, arr, np.float32(0.0))
        lo, hi = robust_window(arr, qmaps.mask)
        units = MAP_UNITS[name]
        fov = _recon_fov(header, (nx, ny, nz), geometry)
        image = ismrmrd.Image.from_array(
            np.ascontiguousarray(arr),
            transpose=False,
            image_type=ismrmrd.IMTYPE_PHASE if name == "Phase0" else ismrmrd.IMTYPE_MAGNITUDE,
            image_index=1,
            image_series_index=SERIES_INDEX[name] + series_offset,
            field_of_view=fov,
            position=geometry.position,
            read_dir=geometry.read_dir,
            phase_dir=geometry.phase_dir,
            slice_dir=geometry.slice_dir,
            patient_table_position=geometry.patient_table_position,
        )
        meta = ismrmrd.Meta()
        meta["MapName"] = name
        meta["Units"] = units
        meta["ImageComment"] = f"{_DESCRIPTION[name]} [{units}]"
        meta["SeriesDescription"] = f"qmapinr_{name}"
        meta["WindowCenter"] = _fmt((lo + hi) / 2)
        meta["WindowWidth"] = _fmt(hi - lo)
        meta["ImageProcessingHistory"] = "QMAPINR"
        meta["DataRole"] = "Quantitative" if name in QUANTITATIVE else "Image"
        meta["ImageRowDir"] = [_fmt(v) for v in geometry.read_dir]
        meta["ImageColumnDir"] = [_fmt(v) for v in geometry.phase_dir]
        meta["ImageSliceNormDir"] = [_fmt(v) for v in geometry.slice_dir]
        if n_bad:
            meta["NonFiniteVoxels"] = str(n_bad)
        if warnings:
            meta["Warning"] = warnings
        image.attribute_string = meta.serialize()
        images.append(image)
    if qmaps.info.get("lrr_series") is not None:
        images += lrr_series_images(qmaps.info["lrr_series"], qmaps.info["lrr_readouts"], geometry, header,
                                    series_offset)
    return images


def lrr_series_images(series: np.ndarray, readouts, geometry: Geometry, header=None,
                      series_offset: int = 0) -> list[ismrmrd.Image]:
    """LoREIN's LRR weighted images: one MRD series per echo, one image per (tau, readout n).

    ``series`` float32 ``(nte, ntau, nread, nz, ny, nx)`` magnitudes; ``readouts`` int ``(nread,)`` the n of each.
    Series ``LRR_SERIES_BASE + e + series_offset``, ``image_index`` ``1 + t * nread + j``; meta MapName
    ``LRR_echo<e>``, DataRole ``LRRSeries``, Echo, TauIndex, Readout, a window over the whole echo series.
    """
    images = []
    nte, ntau, nread, nz, ny, nx = series.shape
    fov = _recon_fov(header, (nx, ny, nz), geometry)
    for e in range(nte):
        lo, hi = robust_window(series[e])
        for t in range(ntau):
            for j in range(nread):
                image = ismrmrd.Image.from_array(
                    np.ascontiguousarray(series[e, t, j], dtype=np.float32), transpose=False,
                    image_type=ismrmrd.IMTYPE_MAGNITUDE, image_index=1 + t * nread + j,
                    image_series_index=LRR_SERIES_BASE + e + series_offset, field_of_view=fov,
                    position=geometry.position, read_dir=geometry.read_dir, phase_dir=geometry.phase_dir,
                    slice_dir=geometry.slice_dir, patient_table_position=geometry.patient_table_position)
                meta = ismrmrd.Meta()
                meta["MapName"] = f"LRR_echo{e}"
                meta["DataRole"] = LRR_ROLE
                meta["Echo"], meta["TauIndex"], meta["Readout"] = str(e), str(t), str(int(readouts[j]))
                meta["SeriesDescription"] = f"qmapinr_LRR_echo{e}"
                meta["WindowCenter"], meta["WindowWidth"] = _fmt((lo + hi) / 2), _fmt(hi - lo)
                meta["ImageProcessingHistory"] = "QMAPINR"
                image.attribute_string = meta.serialize()
                images.append(image)
    return images


def _series_to_name(series: int) -> str | None:
    return next((name for name, idx in SERIES_INDEX.items() if idx == series), None)


def mrd_images_to_maps(images) -> dict[str, tuple[np.ndarray, str]]:
    """Inverse of :func:`maps_to_mrd_images`: map name -> (float32 ``(nz, ny, nx)``, units).

    The name is read from meta ``MapName`` (falling back to :data:`SERIES_INDEX` without offset); the unit
    from meta ``Units`` (falling back to :data:`~qmapinr.recon.kspace.MAP_UNITS`). Raises ValueError for an
    image that is not single-channel, for an unknown map and for a map that appears twice.
    """
    out: dict[str, tuple[np.ndarray, str]] = {}
    for image in images:
        meta = image.meta
        if meta.get("DataRole") == LRR_ROLE:  # LoREIN's weighted-image series, not a map
            continue
        name = meta.get("MapName") or _series_to_name(int(image.image_series_index))
        if name is None or name not in MAP_UNITS:
            raise ValueError(
                f"image of series {image.image_series_index} is not a qmapinr map (MapName={name!r})")
        if name in out:
            raise ValueError(f"map {name} appears in more than one image")
        data = np.asarray(image.data)
        if data.shape[0] != 1:
            raise ValueError(f"map {name} image has {data.shape[0]} channels, expected 1")
        units = meta.get("Units") or MAP_UNITS[name]
        out[name] = (np.array(data[0], dtype=np.float32), str(units))
    return out
