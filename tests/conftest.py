import os
import tempfile

import pytest


def pytest_configure(config):
    # keep the sample-data cache out of the user's home during tests
    os.environ.setdefault("NAPARI_MEDIMP_CACHE", tempfile.mkdtemp(prefix="medimp-cache-"))


@pytest.fixture
def sample_exam():
    from napari_medimp.core.sample import sample_exam as load

    return load()


@pytest.fixture(scope="session")
def archive(tmp_path_factory):
    """A local Orthanc PACS holding patient P7's DCE exam (one series per phase, frames at 0, 35 and
    200 s) and patient P8's single-series exam; stopped at the end of the session."""
    import numpy as np
    from helpers import kidney_volume
    from pacs_server import OrthancServer

    from napari_medimp.core.io.dicom_write import save_dicom_series

    folder = tmp_path_factory.mktemp("orthanc")
    server = OrthancServer(folder)
    vol = kidney_volume(n_frames=3)
    vol.frame_times = np.array([0.0, 35.0, 200.0])
    files = save_dicom_series(vol, folder / "P7", patient_id="P7", patient_name="Doe^Jane", study_date="20240312",
                              series_per_phase=True, phase_names=["pre-contrast", "arterial", "tubular"])
    other = save_dicom_series(kidney_volume(n_frames=1, seed=3), folder / "P8", patient_id="P8",
                              study_date="20240601", description="T1 VIBE")
    assert server.store(files + other) == len(files) + len(other)
    server.volume = vol
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The tiny model file every test that only reads a model shares (built once per session)."""
    from helpers import make_model_file

    return make_model_file(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def training_cohort(tmp_path_factory):
    """A 3-patient synthetic cohort on a small grid, shared by the training tests (never modified)."""
    from napari_medimp.core import synth

    out = tmp_path_factory.mktemp("training-cohort")
    synth.generate_cohort(out, n_patients=3, seed=21, grid=(16, 40, 48), spacing=(6.0, 4.0, 4.0))
    return out
