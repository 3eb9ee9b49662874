"""write_outputs: MRD h5 (read back with ismrmrd), NIfTI (shape, data order, affine), PNG panel."""

from __future__ import annotations

import ismrmrd
import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest

from qmapinr.gadgets.app.outputs import image_affine, write_outputs, write_panel
from qmapinr.gadgets.images import maps_to_mrd_images
from qmapinr.recon.kspace import QuantMaps


@pytest.fixture
def qmaps_images(measurement):
    nx, ny, nz = measurement.geometry.matrix
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    maps = {"T1": (800 + 10 * x + 3 * y + z).astype(np.float32),
            "T2": (50 + x - y).astype(np.float32),
            "B0": (5.0 * (x - nx / 2)).astype(np.float32)}
    qm = QuantMaps(maps, mask=np.ones((nz, ny, nx), bool))
    return qm, maps_to_mrd_images(qm, measurement.geometry, measurement.header)


def test_write_outputs_h5_nifti_png(tmp_path, measurement, qmaps_images):
    qm, images = qmaps_images
    paths = write_outputs(images, tmp_path / "out", header_xml=measurement.header_xml)
    assert set(paths) == {"h5", "png", "nifti_T1", "nifti_T2", "nifti_B0"}

    with ismrmrd.Dataset(str(paths["h5"]), "dataset", create_if_needed=False, mode="r") as ds:
        groups = set(ds.list())
        assert {"xml", "image_1", "image_2", "image_5"} <= groups
        im = ds.read_image("image_1", 0)
        assert ds.number_of_images("image_2") == 1
        xml = ds.read_xml_header()
    assert (xml.decode() if isinstance(xml, bytes) else xml) == measurement.header_xml
    assert im.meta["MapName"] == "T1" and im.meta["Units"] == "ms"
    np.testing.assert_array_equal(im.data[0], qm.maps["T1"])

    nx, ny, nz = measurement.geometry.matrix
    nii = nib.load(str(paths["nifti_T1"]))
    assert nii.shape == (nx, ny, nz) and nii.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(nii.dataobj), qm.maps["T1"].transpose(2, 1, 0))
    vox = np.array(measurement.geometry.fov_mm) / np.array(measurement.geometry.matrix)
    np.testing.assert_allclose(nib.affines.voxel_sizes(nii.affine), vox)
    # centre voxel at the ISMRMRD position (LPS), expressed in RAS
    px, py, pz = measurement.geometry.position
    centre = nib.affines.apply_affine(nii.affine, [nx // 2, ny // 2, nz // 2])
    np.testing.assert_allclose(centre, [-px, -py, pz])
    # stepping along x (readout) moves along read_dir = (0, 1, 0) LPS = (0, -1, 0) RAS
    step = nib.affines.apply_affine(nii.affine, [1, 0, 0]) - nib.affines.apply_affine(nii.affine, [0, 0, 0])
    np.testing.assert_allclose(step, [0.0, -vox[0], 0.0], atol=1e-5)
    assert b"[ms]" in nii.header["descrip"].item()
    np.testing.assert_allclose(nii.affine, image_affine(images[0]))

    png = mpimg.imread(str(paths["png"]))
    assert paths["png"].stat().st_size > 5000 and png.std() > 0.05


def test_truth_panel_adds_rows(tmp_path, qmaps_images):
    qm, images = qmaps_images
    plain = mpimg.imread(str(write_panel(images, tmp_path / "a.png", dpi=40)))
    truth = {"T1": qm.maps["T1"] * 1.05, "T2": (qm.maps["T2"], "ms")}  # B0 has no truth: blank panels
    with_truth = mpimg.imread(str(write_panel(images, tmp_path / "b.png", truth=truth, dpi=40)))
    assert with_truth.shape[0] > 2.5 * plain.shape[0]
    ortho = mpimg.imread(str(write_panel(images, tmp_path / "c.png", ortho=True, dpi=40)))
    assert ortho.shape[0] > 2.5 * plain.shape[0]


def test_write_outputs_rejects_empty(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        write_outputs([], tmp_path)


def _image(geometry_dirs, position=(10.0, -20.0, 30.0)):
    from qmapinr.recon.kspace import Geometry

    read, phase, slc = geometry_dirs
    g = Geometry(matrix=(8, 6, 4), fov_mm=(16.0, 18.0, 20.0), position=position, read_dir=read, phase_dir=phase,
                 slice_dir=slc)
    qm = QuantMaps({"T1": np.ones((4, 6, 8), np.float32)}, mask=np.ones((4, 6, 8), bool))
    return maps_to_mrd_images(qm, g)[0]


def test_affine_follows_an_oblique_acquisition_geometry():
    c, s = np.cos(0.3), np.sin(0.3)
    read, phase = (c, s, 0.0), (-s, c, 0.0)
    slc = tuple(np.cross(read, phase))
    aff = image_affine(_image((read, phase, slc)))
    vox = np.array([2.0, 3.0, 5.0])
    lps = np.column_stack([read, phase, slc]) * vox
    np.testing.assert_allclose(aff[:3, :3], np.diag([-1, -1, 1]) @ lps, atol=1e-6)
    centre = aff @ np.array([4, 3, 2, 1.0])  # voxel (nx//2, ny//2, nz//2) sits at the ISMRMRD position
    np.testing.assert_allclose(centre[:3], [-10.0, 20.0, 30.0], atol=1e-6)


@pytest.mark.parametrize("dirs, expected_slice, warned", [
    (((0, 0, 0), (0, 0, 0), (0, 0, 0)), (0, 0, 1), "all zero"),  # ISMRMRD's default
    (((1, 0, 0), (1, 0, 0), (0, 0, 1)), (0, 0, 1), "not orthonormal"),
    (((0, 1, 0), (1, 0, 0), (0, 0, 0)), (0, 0, -1), "slice_dir is zero"),  # slice = read x phase
])
def test_bad_direction_cosines_fall_back_with_a_warning(tmp_path, caplog, dirs, expected_slice, warned):
    from qmapinr.gadgets.app.outputs import write_nifti
    from qmapinr.recon.mrdheader import checked_directions

    (read, phase, slc), problem = checked_directions(*dirs)
    assert warned in problem and slc == pytest.approx(expected_slice)
    image = _image(dirs)
    with caplog.at_level("WARNING"):
        path = write_nifti(image, tmp_path / "t1.nii.gz", "T1", "ms")  # used to crash on a singular affine
    assert warned in caplog.text
    aff = nib.load(str(path)).affine
    assert abs(np.linalg.det(aff[:3, :3])) == pytest.approx(2.0 * 3.0 * 5.0)


def test_geometry_from_acquisition_uses_the_fallback(caplog):
    from qmapinr.recon.mrdheader import EncodingInfo, geometry_from_acquisition

    acq = ismrmrd.Acquisition.from_array(np.zeros((1, 8), np.complex64))  # direction cosines left at 0
    info = EncodingInfo((8, 6, 4), (16.0, 18.0, 20.0), (8, 6, 4), (16.0, 18.0, 20.0), 1)
    with caplog.at_level("WARNING"):
        g = geometry_from_acquisition(acq, info)
    assert (g.read_dir, g.phase_dir, g.slice_dir) == ((1, 0, 0), (0, 1, 0), (0, 0, 1))
    assert "identity orientation" in caplog.text
