"""summit_recon reports its stages and every epoch to a progress callback."""

from __future__ import annotations

from synthetic import tiny_dataset

from qmapinr.recon.config import SummitConfig
from qmapinr.recon.methods.summit.solver import summit_recon


def test_summit_recon_reports_stages_and_epochs():
    ks = tiny_dataset().kspace
    reports = []
    summit_recon(ks, SummitConfig(epochs=3, coil_mode="ratio", threads=1), progress=reports.append)
    stages = [r.stage for r in reports]
    assert stages[0] == "prepare" and stages[-1] == "done" and "maps" in stages
    epochs = [r for r in reports if r.stage == "fit" and r.epoch]
    assert [r.epoch for r in epochs] == [1, 2, 3]
    assert epochs[-1].eta_s == 0.0 and all(r.loss > 0 for r in epochs)
