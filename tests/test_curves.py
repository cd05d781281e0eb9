import numpy as np
import pytest

from napari_medimp.core.curves import enhancement_summary, region_curves
from napari_medimp.core.volume import DCEVolume


def test_enhancement_summary_by_hand():
    times = np.array([0.0, 10.0, 20.0, 30.0, 40.0])
    curve = np.array([100.0, 100.0, 140.0, 300.0, 250.0])
    s = enhancement_summary(curve, times)
    assert s["baseline"] == 100.0 and s["peak_enhancement"] == 200.0
    assert s["time_to_peak_s"] == 30.0
    # half peak (100) is crossed between 20 s (40) and 30 s (200): 20 + 60/160 * 10
    assert s["time_to_half_peak_s"] == pytest.approx(23.75)
    assert s["relative_peak_enhancement"] == pytest.approx(2.0)


def test_region_curves_average_each_label():
    data = np.zeros((3, 2, 2, 2), np.float32)
    data[:, 0] = np.array([1.0, 2.0, 3.0])[:, None, None]
    labels = np.zeros((2, 2, 2), np.uint8)
    labels[0] = 2
    volume = DCEVolume(data, np.eye(4))
    curves = region_curves(volume, labels, {2: "cortex", 3: "medulla"})
    assert list(curves) == ["cortex"]
    np.testing.assert_allclose(curves["cortex"], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="label grid"):
        region_curves(volume, labels[:1], {2: "cortex"})
