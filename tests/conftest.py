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
