"""Files written after a replay: MRD images (``maps.h5``), one NIfTI per map, a PNG panel (``maps.png``).

NIfTI convention: the array is ordered ``(x, y, z)`` = (readout, phase, slice), i.e. the map's ``(nz, ny,
nx)`` transposed. The affine maps voxel indices to RAS+ mm: columns are ``read_dir * dx``, ``phase_dir * dy``,
``slice_dir * dz`` (voxel size = ``field_of_view / matrix_size``) in ISMRMRD's patient coordinates (LPS, as
DICOM), then the first two rows are negated (LPS -> RAS). The ISMRMRD ``position`` (centre of the volume) is
put at voxel ``(nx // 2, ny // 2, nz // 2)``, which is where the project's centred FFT (DC at n // 2) puts the
centre of the field of view. The map's name and unit are stored in the NIfTI ``descrip`` field. Zero or
non-orthonormal direction cosines (ISMRMRD's default is all zero) fall back to the identity orientation with a
warning (:func:`qmapinr.recon.mrdheader.checked_directions`), so the affine is always invertible.
"""

from __future__ import annotations

import logging
from pathlib import Path

import ismrmrd
import numpy as np

from qmapinr.gadgets.images import SERIES_INDEX, mrd_images_to_maps, robust_window
from qmapinr.recon.mrdheader import checked_directions

logger = logging.getLogger(__name__)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_CMAPS = {"T1": "viridis", "T2": "viridis", "T2star": "viridis", "A": "gray", "B0": "RdBu_r",
          "Phase0": "twilight", "QSM": "gray", "Residual": "inferno"}


_SIGNED = frozenset({"B0", "QSM"})


def image_affine(image: ismrmrd.Image) -> np.ndarray:
    """4x4 affine: voxel index ``(i, j, k)`` = (x, y, z) -> RAS+ mm (see the module docstring)."""
    matrix = np.array(image.matrix_size, dtype=float)
    vox = np.array(image.field_of_view, dtype=float) / matrix
    dirs, problem = checked_directions(image.read_dir, image.phase_dir, image.slice_dir)
    if problem:
        logger.warning("image series %d: %s", image.image_series_index, problem)
    rot = np.column_stack(dirs)
    lin = rot * vox[None, :]
    centre = np.floor(matrix / 2)
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = np.array(image.position, dtype=float) - lin @ centre
    return _LPS_TO_RAS @ aff


def write_nifti(image: ismrmrd.Image, path, name: str, units: str) -> Path:
    """One map image as float32 NIfTI-1 ``(x, y, z)`` with qform/sform = :func:`image_affine`."""
    import nibabel as nib

    arr = np.asarray(image.data[0], dtype=np.float32).transpose(2, 1, 0)
    aff = image_affine(image)
    nii = nib.Nifti1Image(np.ascontiguousarray(arr), aff)
    hdr = nii.header
    hdr.set_xyzt_units("mm")
    hdr.set_qform(aff, code=1)
    hdr.set_sform(aff, code=1)
    hdr["descrip"] = f"qmapinr {name} [{units}]"[:79].encode("ascii", "replace")
    hdr["intent_name"] = name[:15].encode("ascii", "replace")
    wc, ww = image.meta.get("WindowCenter"), image.meta.get("WindowWidth")
    if wc is not None and ww is not None:
        hdr["cal_min"], hdr["cal_max"] = float(wc) - float(ww) / 2, float(wc) + float(ww) / 2
    path = Path(path)
    nib.save(nii, str(path))
    return path


def write_mrd(images, path, header_xml: str | bytes | None = None) -> Path:
    """All images into an MRD HDF5 file, group ``dataset``, one ``image_<series>`` group per series."""
    path = Path(path)
    with ismrmrd.Dataset(str(path), "dataset", mode="w") as ds:
        if header_xml is not None:
            ds.write_xml_header(header_xml.encode("utf-8") if isinstance(header_xml, str) else header_xml)
        for image in sorted(images, key=lambda im: im.image_series_index):
            ds.append_image(f"image_{image.image_series_index}", image)
    return path


def _images_by_name(images) -> dict[str, ismrmrd.Image]:
    """Map name -> image, by meta ``MapName`` or (fallback) the fixed series index."""
    inverse = {idx: name for name, idx in SERIES_INDEX.items()}
    return {im.meta.get("MapName") or inverse.get(int(im.image_series_index)): im for im in images}


def _views(arr: np.ndarray, ortho: bool) -> list[tuple[str, np.ndarray, int]]:
    """(title, 2-D slice, axis pair) of a ``(nz, ny, nx)`` volume: axial centre slice, optionally cor./sag."""
    nz, ny, nx = arr.shape
    out = [("axial", arr[nz // 2], 0)]
    if ortho:
        out += [("coronal", arr[:, ny // 2, :], 1), ("sagittal", arr[:, :, nx // 2], 2)]
    return out


def _aspect(vox: np.ndarray, kind: int) -> float:
    # rows/cols of each view: axial (y, x), coronal (z, x), sagittal (z, y); vox = (dx, dy, dz)
    dx, dy, dz = vox
    return {0: dy / dx, 1: dz / dx, 2: dz / dy}[kind]


def write_panel(images, path, truth: dict | None = None, ortho: bool = False, dpi: int = 110) -> Path:
    """PNG panel: one column per map; rows = reconstruction views, then (with ``truth``) truth and error.

    Parameters
    ----------
    images : MRD map images (as from :func:`~qmapinr.gadgets.images.maps_to_mrd_images`).
    truth : optional name -> float ``(nz, ny, nx)`` (or ``(array, units)``); maps without truth are blank.
    ortho : add coronal and sagittal centre slices below the axial one.

    Windows: the image meta ``WindowCenter``/``WindowWidth`` (robust 1-99 % in the mask; made symmetric about
    0 for B0 and QSM, fixed to +-pi for Phase0), the truth row uses the same window, the error row is
    symmetric at the 99th percentile of ``|recon - truth|``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = mrd_images_to_maps(images)
    by_name = _images_by_name(images)
    names = sorted(maps, key=lambda n: SERIES_INDEX.get(n, 99))
    truth = {k: (v[0] if isinstance(v, tuple) else v) for k, v in (truth or {}).items()}
    nviews = 3 if ortho else 1
    rows = nviews + (2 if truth else 0)
    fig, axes = plt.subplots(rows, len(names), figsize=(2.6 * len(names), 2.4 * rows), squeeze=False)
    for col, name in enumerate(names):
        arr, units = maps[name]
        im = by_name.get(name)
        vox = np.array(im.field_of_view, dtype=float) / np.array(im.matrix_size, dtype=float)
        if "WindowCenter" in im.meta and "WindowWidth" in im.meta:
            c, w = float(im.meta["WindowCenter"]), float(im.meta["WindowWidth"])
            lo, hi = c - w / 2, c + w / 2
        else:
            lo, hi = robust_window(arr, arr != 0)
        if name in _SIGNED:  # diverging colour map centred on 0
            lo, hi = -max(abs(lo), abs(hi)), max(abs(lo), abs(hi))
        elif name == "Phase0":
            lo, hi = -np.pi, np.pi
        cmap = _CMAPS.get(name, "viridis")
        for row, (view, sl, kind) in enumerate(_views(arr, ortho)):
            ax = axes[row, col]
            h = ax.imshow(sl, cmap=cmap, vmin=lo, vmax=hi, aspect=_aspect(vox, kind), origin="lower")
            ax.set_title(f"{name} ({view})" if ortho else name, fontsize=9)
            fig.colorbar(h, ax=ax, fraction=0.046, pad=0.03).set_label(units, fontsize=8)
        if truth:
            ref = truth.get(name)
            tax, eax = axes[nviews, col], axes[nviews + 1, col]
            if ref is None or np.shape(ref) != arr.shape:
                if ref is not None:
                    logger.warning("truth map %s has shape %s, recon %s; not shown", name, np.shape(ref),
                                   arr.shape)
                tax.set_visible(False)
                eax.set_visible(False)
            else:
                ref = np.asarray(ref, dtype=np.float32)
                _, sl, kind = _views(ref, False)[0]
                h = tax.imshow(sl, cmap=cmap, vmin=lo, vmax=hi, aspect=_aspect(vox, kind), origin="lower")
                tax.set_title(f"{name} truth", fontsize=9)
                fig.colorbar(h, ax=tax, fraction=0.046, pad=0.03).set_label(units, fontsize=8)
                err = arr - ref
                sel = np.isfinite(err) & (ref != 0)
                lim = float(np.percentile(np.abs(err[sel]), 99)) if sel.any() else 1.0
                lim = lim if lim > 0 else 1.0
                _, esl, _ = _views(err, False)[0]
                h = eax.imshow(esl, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect=_aspect(vox, kind),
                               origin="lower")
                eax.set_title(f"{name} error", fontsize=9)
                fig.colorbar(h, ax=eax, fraction=0.046, pad=0.03).set_label(units, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def write_outputs(
    images,
    out_dir,
    header_xml: str | bytes | None = None,
    truth: dict | None = None,
    ortho: bool = False,
) -> dict[str, Path]:
    """Write ``maps.h5`` (MRD images + header), ``<map>.nii.gz`` per map and ``maps.png`` into ``out_dir``.

    Returns
    -------
    dict: ``'h5'`` and ``'png'`` paths and ``'nifti_<map>'`` per map.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = list(images)
    if not images:
        raise ValueError("no images to write")
    paths: dict[str, Path] = {"h5": write_mrd(images, out_dir / "maps.h5", header_xml)}
    maps = mrd_images_to_maps(images)
    by_name = _images_by_name(images)
    for name, (_, units) in maps.items():
        image = by_name[name]
        paths[f"nifti_{name}"] = write_nifti(image, out_dir / f"{name}.nii.gz", name, units)
    paths["png"] = write_panel(images, out_dir / "maps.png", truth=truth, ortho=ortho)
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths
