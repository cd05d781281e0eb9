"""Memory budget: sizes an input controls are refused before allocation, with the size and the budget."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import kidney_volume

from napari_medimp.core.io import load_dce, save_nifti
from napari_medimp.core.memory import BUDGET_ENV, MemoryBudgetError, check_memory, memory_budget, total_memory
from napari_medimp.core.preprocess import PreprocessConfig, prepare
from napari_medimp.core.volume import DCEVolume


@pytest.mark.parametrize(("text", "expected"), [("6G", 6 * 2**30), ("512 MiB", 512 * 2**20), ("1000", 1000),
                                                 ("1.5gb", int(1.5 * 2**30))])
def test_budget_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv(BUDGET_ENV, text)
    assert memory_budget() == expected


def test_default_budget_is_half_the_memory_and_a_share_can_be_set(monkeypatch):
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    assert memory_budget() == int(0.5 * total_memory())
    monkeypatch.setenv(BUDGET_ENV, "25%")
    assert memory_budget() == int(0.25 * total_memory())
    for bad in ("lots", "-3G", "0", "150%", "6Q"):
        monkeypatch.setenv(BUDGET_ENV, bad)
        with pytest.raises(ValueError, match=BUDGET_ENV):
            memory_budget()


def test_check_names_what_the_size_and_the_budget(monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "1M")
    check_memory(2**20, "exactly the budget")
    with pytest.raises(MemoryBudgetError, match=r"^thing would need 2\.0 MiB of memory, more than the budget of "
                                                r"1\.0 MiB \(set NAPARI_MEDIMP_MEMORY_BUDGET"):
        check_memory(2 * 2**20, "thing")


def test_a_file_larger_than_the_budget_is_refused_before_reading(tmp_path, monkeypatch):
    volume = kidney_volume()  # 8 x 20 x 40 x 48 float32: 1.2 MiB, 2.3 MiB with the reoriented copy
    path = save_nifti(tmp_path / "g.nii.gz", volume.data, volume.affine)
    monkeypatch.setenv(BUDGET_ENV, "2M")
    with pytest.raises(MemoryBudgetError, match=r"g\.nii\.gz: reading 48 x 40 x 20 x 8 voxels would need 2\.3 MiB"):
        load_dce(path, lazy=False)
    lazy = load_dce(path, lazy=True)  # one frame at a time fits
    assert lazy.shape == volume.shape


def test_an_absurd_voxel_size_is_refused_before_resampling(monkeypatch):
    """100 mm voxels resampled to 4 x 2.5 x 2.5 mm: the box would become about 10^9 voxels."""
    volume = kidney_volume()
    affine = np.diag([100.0, 100.0, 100.0, 1.0])
    huge = DCEVolume(volume.data, affine, volume.frame_times, source="big.nii.gz")
    monkeypatch.setenv(BUDGET_ENV, "4G")
    with pytest.raises(MemoryBudgetError, match=r"resampling box \[0, 20, 0, 40, 0, 48\] of big\.nii\.gz "
                                                r"\(voxels of 100 x 100 x 100 mm\) to 4 x 2\.5 x 2\.5 mm"):
        prepare(huge, PreprocessConfig(input_size=(16, 24, 24)), roi=[0, 20, 0, 40, 0, 48])
    # the same box at its real voxel size goes through
    assert prepare(volume, PreprocessConfig(input_size=(16, 24, 24)), roi=[0, 20, 0, 40, 0, 48]).tensor.shape[-3:] \
        == (16, 24, 24)


def test_a_lazily_read_gzip_bomb_is_refused_by_its_whole_decompressed_size(tmp_path, monkeypatch):
    """A file above the lazy threshold was checked one frame at a time: computing its volume then took
    every frame, over the budget. Zeros compress about 1000:1, so a small file decompresses to a lot."""
    import napari_medimp.core.io.nifti as nifti

    data = np.zeros((20, 16, 64, 64), np.float32)  # (t, z, y, x): 5.0 MiB as float32, 0.25 MiB per frame
    path = save_nifti(tmp_path / "bomb.nii.gz", data, np.eye(4))
    assert path.stat().st_size < 64 * 2**10
    monkeypatch.setattr(nifti, "LAZY_THRESHOLD_BYTES", 2**20)
    monkeypatch.setenv(BUDGET_ENV, "3M")
    with pytest.raises(MemoryBudgetError, match=r"bomb\.nii\.gz: reading 64 x 64 x 16 x 20 voxels would need 5\.2 MiB"):
        load_dce(path)
    monkeypatch.setenv(BUDGET_ENV, "6M")
    volume = load_dce(path)
    assert volume.metadata["lazy"] and volume.shape == (20, 16, 64, 64)
