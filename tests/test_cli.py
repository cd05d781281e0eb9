"""The ``medimp`` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from nibabel.testing import data_path

from napari_medimp.cli import main


def test_info_describes_a_file(capsys):
    assert main(["info", os.path.join(data_path, "example4d.nii.gz")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape_tzyx"] == [2, 24, 96, 128]
    assert info["format"] == "nifti"


def test_info_on_a_broken_file_names_it_and_fails(tmp_path, capsys):
    bad = tmp_path / "bad.nii"
    bad.write_text("not an image")
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.nii" in err and "Traceback" not in err


def test_synth_writes_a_cohort(tmp_path):
    out = tmp_path / "cohort"
    assert main(["synth", "--patients", "2", "--seed", "5", "--out", str(out)]) == 0
    assert (out / "clinical.csv").exists() and (out / "ground_truth.json").exists()
    images = sorted(out.rglob("*_dce.nii.gz"))
    assert images, "no exam images written"
    info_code = main(["info", str(images[0].parent.parent)])
    assert info_code == 0


@pytest.mark.gui
def test_headless_demo_writes_screenshot_and_report(tmp_path):
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-m", "napari_medimp.cli", "demo", "--headless", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    from PIL import Image

    shot = np.asarray(Image.open(tmp_path / "demo_screenshot.png"))
    assert shot.shape[0] > 300 and shot[..., :3].std() > 10
    report = json.loads((tmp_path / "demo_report.json").read_text())
    assert report["regions"]["cortex"]["time_to_half_peak_s"] < report["regions"]["medulla"]["time_to_half_peak_s"]
    assert "synthetic" in (tmp_path / "demo_report.md").read_text()
