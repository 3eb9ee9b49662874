"""ISMRMRD header <-> :class:`SequenceParams` / :class:`Geometry` (the project's convention, docs/design.md).

``build_header`` is used by the simulator, ``parse_header`` by the stream side; both live here so that the
convention is written down once. A missing required field raises :class:`HeaderError` naming the field;
``InversionEfficiency`` is the one documented default (B = -1).

Sequence history (optional, all three written together by ``build_header`` when a loop order is set):
``userParameterString PrepLoopOrder`` (``tau-outer`` | ``shot-outer``; absent = the paper's closed form),
``userParameterDouble RecoveryDelay_ms`` (free recovery before each preparation, default 0) and
``userParameterLong PrepDummyShots`` (dummy preparations, i.e. segments without acquisition, played before the
first acquired shot for shot-outer, before every tau block for tau-outer; default 0). The reconstruction models
the periodic steady state of the declared loop (:mod:`qmapinr.recon.physics.signal`); ``PrepDummyShots``
describes how the scan reached it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ismrmrd
import ismrmrd.xsd as xsd
import numpy as np

from qmapinr.recon.kspace import Geometry, SequenceParams

logger = logging.getLogger(__name__)

ORTHONORMAL_TOL = 1e-3
"""Largest allowed ``|R^T R - I|`` entry of the direction-cosine matrix ``R = [read, phase, slice]``."""

IDENTITY_DIRECTIONS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


class HeaderError(ValueError):
    """The ISMRMRD header lacks a field the T2IR ME-GRE convention requires."""


@dataclass(frozen=True)
class EncodingInfo:
    """Sizes read from ``encoding[0]``: matrix (nx, ny, nz), FOV (mm) and counter limits."""

    matrix: tuple[int, int, int]
    fov_mm: tuple[float, float, float]
    recon_matrix: tuple[int, int, int]
    recon_fov_mm: tuple[float, float, float]
    ncoils: int | None


def _limit(n: int, center: int | None = None) -> xsd.limitType:
    return xsd.limitType(minimum=0, maximum=max(n - 1, 0), center=n // 2 if center is None else center)


def build_header(
    seq: SequenceParams,
    geometry: Geometry,
    ncoils: int,
    field_strength_t: float = 3.0,
    extra_strings: dict[str, str] | None = None,
) -> xsd.ismrmrdHeader:
    """Header for a T2IR ME-GRE measurement following docs/design.md's encoding table."""
    nx, ny, nz = geometry.matrix
    space = xsd.encodingSpaceType(
        matrixSize=xsd.matrixSizeType(x=nx, y=ny, z=nz),
        fieldOfView_mm=xsd.fieldOfViewMm(x=geometry.fov_mm[0], y=geometry.fov_mm[1], z=geometry.fov_mm[2]),
    )
    limits = xsd.encodingLimitsType(
        kspace_encoding_step_0=_limit(nx),
        kspace_encoding_step_1=_limit(ny),
        kspace_encoding_step_2=_limit(nz),
        contrast=_limit(seq.nte, 0),
        segment=_limit(seq.nseg, 0),
        set=_limit(seq.ntau, 0),
    )
    encoding = xsd.encodingType(
        encodedSpace=space,
        reconSpace=space,
        encodingLimits=limits,
        trajectory=xsd.trajectoryType.CARTESIAN,
    )
    doubles = [xsd.userParameterDoubleType(name=f"T2PrepDuration_{i}", value=float(t)) for i, t in
               enumerate(seq.tau_ms)]
    doubles.append(xsd.userParameterDoubleType(name="InversionEfficiency", value=float(seq.inversion_efficiency)))
    strings, longs = [], []
    if seq.prep_loop_order:
        strings.append(xsd.userParameterStringType(name="PrepLoopOrder", value=seq.prep_loop_order))
        doubles.append(xsd.userParameterDoubleType(name="RecoveryDelay_ms", value=float(seq.recovery_delay_ms)))
        longs.append(xsd.userParameterLongType(name="PrepDummyShots", value=int(seq.prep_dummies)))
    for k, v in (extra_strings or {}).items():
        strings.append(xsd.userParameterStringType(name=k, value=v))
    return xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(
            H1resonanceFrequency_Hz=int(round(42.577478518e6 * field_strength_t))
        ),
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(
            systemFieldStrength_T=field_strength_t, receiverChannels=ncoils,
            systemVendor="qmapinr simulator",
        ),
        encoding=[encoding],
        sequenceParameters=xsd.sequenceParametersType(
            TR=[float(seq.tr_ms)], TE=[float(t) for t in seq.te_ms], flipAngle_deg=[float(seq.flip_deg)],
            sequence_type="T2IR-prepared multi-echo GRE",
        ),
        userParameters=xsd.userParametersType(userParameterDouble=doubles, userParameterString=strings,
                                              userParameterLong=longs),
    )


def header_to_xml(header: xsd.ismrmrdHeader) -> str:
    """Serialise with ismrmrd's own writer."""
    return xsd.ToXML(header)


def parse_header(header: xsd.ismrmrdHeader | str | bytes) -> tuple[SequenceParams, EncodingInfo]:
    """Read the sequence timing and encoding sizes; raise :class:`HeaderError` naming any missing field."""
    if isinstance(header, bytes):
        header = header.rstrip(b"\x00").decode("utf-8")
    if isinstance(header, str):
        try:
            header = xsd.CreateFromDocument(header.rstrip("\x00"))
        except Exception as exc:  # xsdata raises several parser error types
            raise HeaderError(f"ISMRMRD header is not valid XML for the ismrmrd schema: {exc}") from exc
    if not header.encoding:
        raise HeaderError("header has no encoding[0]")
    enc = header.encoding[0]
    ms, fov = enc.encodedSpace.matrixSize, enc.encodedSpace.fieldOfView_mm
    rms, rfov = enc.reconSpace.matrixSize, enc.reconSpace.fieldOfView_mm
    sp = header.sequenceParameters
    if sp is None:
        raise HeaderError("header has no sequenceParameters (needs TR, TE, flipAngle_deg)")
    for name in ("TR", "TE", "flipAngle_deg"):
        if not getattr(sp, name):
            raise HeaderError(f"header field sequenceParameters.{name} is missing")
    up = header.userParameters
    doubles = {p.name: p.value for p in (up.userParameterDouble if up else [])}
    strings = {p.name: p.value for p in (up.userParameterString if up else [])}
    longs = {p.name: p.value for p in (up.userParameterLong if up else [])}
    lim = enc.encodingLimits
    nset = (lim.set.maximum + 1) if (lim is not None and lim.set is not None) else None
    taus = []
    i = 0
    while f"T2PrepDuration_{i}" in doubles:
        taus.append(float(doubles[f"T2PrepDuration_{i}"]))
        i += 1
    if not taus:
        raise HeaderError("header field userParameterDouble T2PrepDuration_0 (ms) is missing")
    if nset is not None and nset != len(taus):
        raise HeaderError(
            f"encodingLimits.set allows {nset} T2-prep indices but the header lists {len(taus)} "
            "T2PrepDuration_i values"
        )
    if lim is None or lim.segment is None:
        raise HeaderError("header field encodingLimits.segment (readouts per segment - 1) is missing")
    order = strings.get("PrepLoopOrder")
    if order not in (None, "tau-outer", "shot-outer"):
        raise HeaderError(f"userParameterString PrepLoopOrder={order!r}; expected 'tau-outer' or 'shot-outer'")
    delay = float(doubles.get("RecoveryDelay_ms", 0.0))
    dummies = int(longs.get("PrepDummyShots", 0))
    if delay < 0 or dummies < 0:
        raise HeaderError(f"RecoveryDelay_ms={delay} and PrepDummyShots={dummies} must be >= 0")
    seq = SequenceParams(
        tr_ms=float(sp.TR[0]),
        te_ms=tuple(float(t) for t in sp.TE),
        flip_deg=float(sp.flipAngle_deg[0]),
        tau_ms=tuple(taus),
        nseg=int(lim.segment.maximum) + 1,
        inversion_efficiency=float(doubles.get("InversionEfficiency", -1.0)),
        prep_loop_order=order,
        recovery_delay_ms=delay,
        prep_dummies=dummies,
    )
    if lim.contrast is not None and lim.contrast.maximum + 1 != seq.nte:
        raise HeaderError(
            f"encodingLimits.contrast allows {lim.contrast.maximum + 1} echoes but sequenceParameters lists "
            f"{seq.nte} TE values"
        )
    asi = header.acquisitionSystemInformation
    info = EncodingInfo(
        matrix=(int(ms.x), int(ms.y), int(ms.z)),
        fov_mm=(float(fov.x), float(fov.y), float(fov.z)),
        recon_matrix=(int(rms.x), int(rms.y), int(rms.z)),
        recon_fov_mm=(float(rfov.x), float(rfov.y), float(rfov.z)),
        ncoils=(asi.receiverChannels if asi is not None else None),
    )
    return seq, info


Directions = tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]


def checked_directions(read_dir, phase_dir, slice_dir, tol: float = ORTHONORMAL_TOL) -> tuple[Directions, str | None]:
    """Direction cosines to use for ``(read, phase, slice)`` (each ``(3,)``), and a warning text or None.

    Documented fallback: the three vectors are used as given when ``R = [read, phase, slice]`` is orthonormal
    within ``tol``. If read and phase are orthonormal but slice is zero, slice = read x phase (right-handed, as
    the identity). Anything else - all zero (ISMRMRD's default, which some writers leave), NaN, not unit length
    or not orthogonal - becomes the identity (read = x, phase = y, slice = z of the patient frame), with a
    warning: the maps are then correct voxel by voxel, only their placement in patient space is unknown.
    """
    vecs = [np.asarray(v, dtype=float).reshape(3) for v in (read_dir, phase_dir, slice_dir)]
    rot = np.column_stack(vecs)
    if np.all(np.isfinite(rot)) and np.abs(rot.T @ rot - np.eye(3)).max() <= tol:
        return tuple(tuple(float(x) for x in v) for v in vecs), None  # type: ignore[return-value]
    rp = rot[:, :2]
    if np.all(np.isfinite(rot)) and not np.any(vecs[2]) and np.abs(rp.T @ rp - np.eye(2)).max() <= tol:
        sl = np.cross(vecs[0], vecs[1])
        fixed = (tuple(map(float, vecs[0])), tuple(map(float, vecs[1])), tuple(map(float, sl)))
        return fixed, "slice_dir is zero: using read_dir x phase_dir"  # type: ignore[return-value]
    what = "all zero" if not np.any(rot) else "not orthonormal"
    text = (f"direction cosines read={vecs[0].tolist()} phase={vecs[1].tolist()} slice={vecs[2].tolist()} are "
            f"{what}: using the identity orientation (placement in patient space unknown)")
    return IDENTITY_DIRECTIONS, text


def geometry_from_acquisition(acq: ismrmrd.Acquisition, info: EncodingInfo) -> Geometry:
    """Placement of the volume from the first imaging acquisition's header and the encoded sizes.

    Direction cosines go through :func:`checked_directions` (zero or non-orthonormal ones: warning, identity).
    """
    (read, phase, slc), problem = checked_directions(acq.read_dir, acq.phase_dir, acq.slice_dir)
    if problem:
        logger.warning("acquisition %d: %s", acq.scan_counter, problem)
    return Geometry(
        matrix=info.matrix,
        fov_mm=info.fov_mm,
        position=tuple(float(v) for v in acq.position),
        read_dir=read,
        phase_dir=phase,
        slice_dir=slc,
        patient_table_position=tuple(float(v) for v in acq.patient_table_position),
    )
