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
