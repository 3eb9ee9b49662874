"""BART peer: the temporal-subspace reconstruction run by the real BART command-line tools.

Nothing of BART is reimplemented: the k-space, basis and (optionally) coil maps are written as
``.cfl``/``.hdr`` files, ``bart avg``, ``bart ecalib`` and ``bart pics`` run in a temporary directory through
``subprocess``, and the coefficient images are read back and dictionary-matched.

Layout (docs/peers.md): k-space ``[X Y Z C 1 T 1 1 1 1 E]`` with the (tau, n) series in dim 5 (``t = tau *
nseg + n``) and the echoes in dim 10, unsampled points exactly 0; basis ``[1 1 1 1 1 T K]``; ``pics -B``
returns coefficients ``[X Y Z 1 1 1 K 1 1 1 E]``. One ``pics`` call handles all echoes (dim 10 is an
independent batch dimension for the SENSE/basis operator and TV over flags 7 acts on x, y, z only), so the
echo factor ``A e^{-TE/T2*}`` and the B0 phase never need to be in the basis. Coil maps: echo 0 averaged
over dim 5 (``bart avg -w 32``), then ``bart ecalib -m1`` with a calibration size and kernel adapted to small
matrices (the default 6x6 kernel with a small calibration region silently returns all-zero maps).

Install: ``apt-get update && apt-get install -y bart`` (Debian package, v0.8.00). Memory: BART needs the
dense k-space, ``C * nte * ntau * nseg * nx * ny * nz * 8`` bytes, so this peer is for small problems.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from qmapinr.recon.calibration.coilmaps import averaged_kspace, calibration_box, estimate_coil_maps
from qmapinr.recon.calibration.jsense import refine_coil_maps
from qmapinr.recon.config import DictionaryFitConfig
from qmapinr.recon.kspace import KSpace6D, QuantMaps
from qmapinr.recon.physics.dictionary import coefficients_to_maps, default_dictionary
from qmapinr.recon.physics.history import with_shot_groups

log = logging.getLogger(__name__)

BART_INSTALL = "apt-get update && apt-get install -y bart"
_NDIMS = 16


def bart_available() -> bool:
    """True if the ``bart`` executable is on PATH."""
    return shutil.which("bart") is not None


def write_cfl(path_base: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``path_base.hdr`` (dims padded with 1 to 16) and ``path_base.cfl`` (complex64, column-major).

    The array's axis 0 is BART dimension 0 (fastest-varying in the file), as in BART's Python ``writecfl``.
    """
    arr = np.asarray(array)
    if arr.ndim > _NDIMS:
        raise ValueError(f"BART supports at most {_NDIMS} dimensions, got {arr.ndim}")
    dims = list(arr.shape) + [1] * (_NDIMS - arr.ndim)
    base = str(path_base)
    with open(base + ".hdr", "w") as f:
        f.write("# Dimensions\n" + " ".join(str(d) for d in dims) + "\n")
    np.asarray(arr, dtype=np.complex64).ravel(order="F").tofile(base + ".cfl")


def read_cfl(path_base: str | os.PathLike) -> np.ndarray:
    """Read a BART ``.hdr``/``.cfl`` pair into a complex64 array (column-major).

    Trailing singleton dimensions are dropped (BART's own ``readcfl`` convention); inner singletons are kept.
    """
    base = str(path_base)
    with open(base + ".hdr") as f:
        lines = f.read().splitlines()
    try:
        i = next(k for k, line in enumerate(lines) if line.strip().startswith("# Dimensions"))
        dims = [int(v) for v in lines[i + 1].split()]
    except (StopIteration, IndexError, ValueError) as exc:
        raise ValueError(f"{base}.hdr has no valid '# Dimensions' line") from exc
    n = int(np.prod(dims))
    data = np.fromfile(base + ".cfl", dtype=np.complex64)
    if data.size != n:
        raise ValueError(f"{base}.cfl holds {data.size} values, header says {n}")
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return data.reshape(dims, order="F")


def _run(args: list[str], cwd: Path, env: dict) -> str:
    log.debug("bart %s", " ".join(args))
    proc = subprocess.run(["bart", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bart {' '.join(args)} failed ({proc.returncode}): "
                           f"{proc.stdout.strip()} {proc.stderr.strip()}")
    return proc.stdout


def bart_kspace(kspace: KSpace6D, max_bytes: float = 4e9) -> np.ndarray:
    """Dense BART k-space ``[X Y Z C 1 T 1 1 1 1 E]`` complex64 from the sampled lines (zeros elsewhere)."""
    nx, ny, nz = kspace.geometry.matrix
    c, ne = kspace.ncoils, kspace.seq.nte
    nt = kspace.seq.ntau * kspace.seq.nseg
    need = 8.0 * c * ne * nt * nx * ny * nz
    if need > max_bytes:
        raise MemoryError(f"dense BART k-space needs {need / 1e9:.1f} GB (> {max_bytes / 1e9:.1f} GB)")
    out = np.zeros((nx, ny, nz, c, 1, nt, 1, 1, 1, 1, ne), dtype=np.complex64)
    t = np.asarray(kspace.tau) * kspace.seq.nseg + np.asarray(kspace.seg)
    # data (C, E, L, X) -> out[X, ky_l, kz_l, C, 0, t_l, ..., E]
    out[:, kspace.ky, kspace.kz, :, 0, t, 0, 0, 0, 0, :] = np.transpose(kspace.data, (2, 3, 0, 1))
    return out


def bart_fft_sign(matrix: tuple[int, ...]) -> int:
    """Global sign between ``pics`` images and the project's centred FFT for even sizes.

    ``pics`` centres k-space by modulation (``fftmod``); for an even size ``n`` that equals the
    ``fftshift`` convention up to a factor ``-1`` when ``n % 4 == 2``. Checked on v0.8.00 with ``pics -S -l2``
    on fully sampled data: (16,16,6) -> -1, (14,14,8) -> +1, (14,14,6) -> -1, (12,16,4) -> +1.
    """
    return -1 if sum(n % 4 == 2 for n in matrix) % 2 else 1


def ecalib_geometry(kspace: KSpace6D, calib: int = 12, kernel: int = 4) -> tuple[str, str]:
    """``ecalib -r`` and ``-k`` arguments (``"x:y:z"``) for this sampling pattern.

    ecalib searches a centred fully sampled region (bounded by ``-r``) of the averaged k-space and aborts
    (assertions in ``casorati_dims`` / ``caltwo``) when the kernel is not smaller than that region. Checked on
    v0.8.00: for a fully sampled centred box of odd width ``w`` (ky, kz) it reports a region of ``w - 2``.
    The box is computed as :func:`qmapinr.recon.calibration.coilmaps.calibration_box` does (the readout is
    fully sampled) and the kernel clipped to ``region - 1``; :func:`bart_subspace_recon` retries once with the
    region ecalib actually reports if this still fails.
    """
    nx, _, _ = kspace.geometry.matrix
    _, count = averaged_kspace(kspace, 0)
    wz, wy = calibration_box(count, (calib, calib))
    if min(wz, wy) < 3:
        raise RuntimeError(f"the averaged k-space has no fully sampled centre for ecalib (found {wy}x{wz})")
    region = (min(calib, nx), wy, wz)
    found = (region[0], max(1, wy - 2), max(1, wz - 2))
    kern = tuple(max(1, min(kernel, f - 1)) for f in found)
    return ":".join(map(str, region)), ":".join(map(str, kern))


def _ecalib(work: Path, env: dict, cal: str, kern: str, kernel: int, crop: float) -> None:
    """``bart ecalib -m1``; on an assertion failure retry once with the kernel clipped to the found region."""
    try:
        _run(["ecalib", "-d4", "-m1", "-c", str(crop), "-k", kern, "-r", cal, "ksp_avg", "sens"], work, env)
    except RuntimeError as exc:
        m = re.search(r"Calibration region\.\.\.\s*\(size: (\d+)x(\d+)x(\d+)", str(exc))
        if m is None:
            raise
        kern2 = ":".join(str(max(1, min(kernel, int(v) - 1))) for v in m.groups())
        log.warning("ecalib failed with kernel %s; retrying with %s (region %sx%sx%s)", kern, kern2,
                    *m.groups())
        _run(["ecalib", "-m1", "-c", str(crop), "-k", kern2, "-r", cal, "ksp_avg", "sens"], work, env)


def bart_subspace_recon(
    kspace: KSpace6D,
    basis: np.ndarray,
    rank: int | None = None,
    reg: str = "T:7:0:0.005",
    iters: int = 100,
    sens: np.ndarray | None = None,
    calib: int = 12,
    kernel: int = 4,
    calib_data: str = "avg",
    threads: int = 1,
    crop: float = 0.0,
    pics_args: str = "",
    keep_dir: str | None = None,
) -> np.ndarray:
    """Subspace reconstruction by ``bart pics -S -e -i iters -R reg -B basis``.

    Parameters
    ----------
    kspace : sampled lines.
    basis : real ``(ntau*nseg, K)`` or ``(ntau, nseg, K)`` temporal basis; the first ``rank`` columns are
        used.
    rank : number of basis columns (None = all).
    reg : BART ``-R`` regulariser (``T:7:0:l`` = 3-D TV, ``W:7:64:l`` = wavelet joint over coefficients);
        ``""`` = none (e.g. with ``pics_args="-l2 -r 1e-4"``: Tikhonov, solved by CG).
    iters : ``pics`` iterations.
    sens : complex ``(C, nz, ny, nx)`` coil maps; None = ``bart ecalib -m1 -r calib -k kernel`` on the
        echo-0 k-space averaged over (tau, n) by ``bart avg -w``.
    calib, kernel : ``ecalib`` calibration size and kernel size (clipped to the matrix).
    calib_data : "avg" — ``bart avg -w`` of the echo-0 k-space over (tau, n) (the plain BART recipe; it mixes
        contrasts per location and ESPIRiT maps suffer); "contrast" — the sign-aware least-squares combination
        of :func:`qmapinr.recon.calibration.coilmaps.averaged_kspace`, written as the calibration input.
    threads : ``OMP_NUM_THREADS`` for BART.
    crop : ``ecalib -c`` crop threshold on the eigenvalue maps. 0 keeps the maps everywhere: the default 0.8
        cuts large parts of the object here, because the (tau, n)-averaged calibration data mix contrasts.
    pics_args : extra ``pics`` options, whitespace separated (e.g. ``"-u 0.01"`` for the ADMM rho).
    keep_dir : if given, run there and keep the files (debugging); else a temporary directory.

    Returns
    -------
    complex64 coefficient images ``(nte, K, nz, ny, nx)``.
    """
    if not bart_available():
        raise RuntimeError(f"BART CLI not found on PATH; install it with: {BART_INSTALL}")
    nx, ny, nz = kspace.geometry.matrix
    if any(n % 2 for n in (nx, ny, nz)):
        raise ValueError(f"matrix {nx}x{ny}x{nz}: BART's pics centres odd dimensions differently from the "
                         "project's FFT (DC at n // 2); only even matrix sizes are supported")
    b = np.asarray(basis, dtype=np.float32)
    b = b.reshape(-1, b.shape[-1])[:, : (rank or b.shape[-1])]
    nt, k = b.shape
    if nt != kspace.seq.ntau * kspace.seq.nseg:
        raise ValueError(f"basis has {nt} time points, the sequence has {kspace.seq.ntau * kspace.seq.nseg}")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory(prefix="qmapinr_bart_") as tmp:
        work = Path(keep_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        write_cfl(work / "ksp", bart_kspace(kspace))
        write_cfl(work / "basis", b.reshape(1, 1, 1, 1, 1, nt, k))
        if sens is None:
            if calib_data == "avg":
                _run(["slice", "10", "0", "ksp", "ksp_e0"], work, env)
                _run(["avg", "-w", "32", "ksp_e0", "ksp_avg"], work, env)
            elif calib_data == "contrast":
                mean, _ = averaged_kspace(kspace, 0, weighting="contrast")  # (C, nz, ny, nx)
                write_cfl(work / "ksp_avg", np.transpose(mean, (3, 2, 1, 0)))
            else:
                raise ValueError(f"unknown calib_data {calib_data!r}; use 'avg' or 'contrast'")
            cal, kern = ecalib_geometry(kspace, calib, kernel)
            _ecalib(work, env, cal, kern, kernel, crop)
            s = read_cfl(work / "sens")
            if not np.any(s):
                raise RuntimeError("bart ecalib returned all-zero coil maps (calibration region too small?)")
        else:
            write_cfl(work / "sens", np.transpose(np.asarray(sens), (3, 2, 1, 0)))
        regs = ["-R", reg] if reg else []
        _run(["pics", "-S", "-e", "-i", str(iters), *regs, *pics_args.split(), "-B", "basis", "ksp", "sens",
              "coeff"], work, env)
        coeff = read_cfl(work / "coeff")
    coeff = coeff.reshape((nx, ny, nz) + coeff.shape[3:] + (1,) * (11 - coeff.ndim))
    coeff = coeff.reshape(nx, ny, nz, k, -1)  # dims 6 (K) and 10 (E); dims 7-9 are 1
    coeff = coeff * bart_fft_sign((nx, ny, nz))
    return np.ascontiguousarray(np.transpose(coeff, (4, 3, 2, 1, 0))).astype(np.complex64)


@dataclass(frozen=True)
class BartConfig(DictionaryFitConfig):
    """Settings of :func:`bart_recon` (grids in ms as for :class:`SubspaceConfig`)."""

    rank: int = 4
    reg: str = "T:7:0:0.005"
    iters: int = 100
    calib: int = 12
    kernel: int = 4
    threads: int = 1
    crop: float = 0.0
    pics_args: str = ""
    coil_maps: Literal["ecalib", "qmapinr"] = "ecalib"  # BART ESPIRiT or ratio maps + JSENSE
    # ecalib input: "contrast" (sign-aware LS combination over (tau, n); ESPIRiT maps median alignment 0.996
    # on the tiny object) or "avg" (plain `bart avg -w`: 0.91, and the T1 maps fail)
    calib_data: Literal["contrast", "avg"] = "contrast"


def bart_recon(kspace: KSpace6D, cfg: BartConfig = BartConfig(), sens: np.ndarray | None = None) -> QuantMaps:
    """BART subspace reconstruction + dictionary matching -> :class:`QuantMaps` (``info`` has timings).

    ``sens`` (``(C, nz, ny, nx)``) overrides ``cfg.coil_maps``. Phase0 is relative to the phase of the maps.
    """
    t0 = time.perf_counter()
    kspace = with_shot_groups(kspace)  # transient shots of a short scan modelled exactly (physics.history)
    dictionary = default_dictionary(kspace.seq, cfg.t1_range_ms, cfg.n_t1, cfg.t2_range_ms, cfg.n_t2)
    basis, emax, emean = dictionary.svd_basis(cfg.rank)
    if sens is None and cfg.coil_maps == "qmapinr":
        sens, _ = refine_coil_maps(kspace, estimate_coil_maps(kspace), basis)
    elif cfg.coil_maps not in ("ecalib", "qmapinr"):
        raise ValueError(f"unknown coil_maps {cfg.coil_maps!r}; use 'ecalib' or 'qmapinr'")
    t1 = time.perf_counter()
    coeff = bart_subspace_recon(kspace, basis, cfg.rank, cfg.reg, cfg.iters, sens=sens, calib=cfg.calib,
                                kernel=cfg.kernel, calib_data=cfg.calib_data, threads=cfg.threads,
                                crop=cfg.crop, pics_args=cfg.pics_args)
    t2 = time.perf_counter()
    qm = coefficients_to_maps(coeff, basis, dictionary, mask_threshold=cfg.mask_threshold, refine=cfg.refine)
    info = dict(qm.info, method="bart-pics-subspace", rank=cfg.rank, reg=cfg.reg, basis_error_max=emax,
                basis_error_mean=emean, bart_s=t2 - t1, match_s=time.perf_counter() - t2,
                total_s=time.perf_counter() - t0)
    return QuantMaps(maps=qm.maps, mask=qm.mask, info=info)
