"""``medimp demo``: napari with the synthetic sample graft; headless mode writes a screenshot and report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .core.curves import enhancement_summary, region_curves
from .core.terms import KIDNEY_REGION_NAMES

REGIONS = KIDNEY_REGION_NAMES


def sample_report(volume, labels) -> dict:
    times = volume.frame_times if volume.frame_times is not None else np.arange(volume.n_frames, dtype=float)
    curves = region_curves(volume, labels, REGIONS)
    return {
        "source": "synthetic renal graft (napari-medimp generator), not patient data",
        "exam": volume.metadata.get("exam"),
        "shape_tzyx": list(volume.shape),
        "spacing_zyx_mm": [round(s, 3) for s in volume.spacing],
        "frame_times_s": [round(float(t), 2) for t in times],
        "regions": {
            name: {k: round(v, 3) for k, v in enhancement_summary(curve, times).items()}
            for name, curve in curves.items()
        },
    }


def _markdown(report: dict) -> str:
    lines = [
        "# napari-medimp demo report",
        "",
        f"Data: {report['source']}; exam {report['exam']}.",
        f"Volume (t, z, y, x): {report['shape_tzyx']}, voxel size (z, y, x) mm: {report['spacing_zyx_mm']}.",
        "",
        "| region | time to half peak (s) | time to peak (s) | relative peak enhancement |",
        "|---|---|---|---|",
    ]
    for name, r in report["regions"].items():
        lines.append(f"| {name} | {r['time_to_half_peak_s']:.1f} | {r['time_to_peak_s']:.1f} | "
                     f"{r['relative_peak_enhancement']:.2f} |")
    return "\n".join(lines) + "\n"


def show_sample(viewer) -> dict:
    """Open the sample in ``viewer`` at the frame of peak cortical enhancement; returns the report."""
    from .core.sample import sample_exam

    _, tissues = viewer.open_sample("napari-medimp", "synthetic_graft")
    tissues.contour = 1  # outlines keep the enhancement visible
    volume, labels = sample_exam()
    report = sample_report(volume, labels)
    times = np.asarray(report["frame_times_s"])
    cortex = report["regions"].get("cortex")
    if cortex:
        frame = int(np.argmin(np.abs(times - cortex["time_to_peak_s"])))
        viewer.dims.set_current_step(0, frame)
    kidney = np.argwhere(np.isin(labels, list(REGIONS)))
    if kidney.size:
        viewer.dims.set_current_step(1, int(np.median(kidney[:, 0])))
    viewer.reset_view()
    return report


WIDGET = "MEDIMP graft analysis"


def dock_prefilled(viewer, layer_name: str | None = None):
    """Dock the MEDIMP widget, filled with the sample patient's clinical values at the sample exam."""
    from .core.sample import sample_record

    _, widget = viewer.window.add_plugin_dock_widget("napari-medimp", WIDGET)
    if layer_name:
        widget.layer_combo.setCurrentText(layer_name)
    if widget.labels_combo.findText("graft tissues") >= 0:
        widget.labels_combo.setCurrentText("graft tissues")
    record = sample_record()
    widget.prefill(exam=record.exam, donor_age=record.donor_age, gfr=record.gfr, creatinine=list(record.creatinine))
    return widget


def wait_for(widget, timeout_s: float = 600.0) -> None:
    """Process events until the widget's background job is over."""
    import time

    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout_s
    while widget.busy:
        if time.monotonic() > deadline:
            raise TimeoutError(f"MEDIMP job still running after {timeout_s:.0f} s")
        QApplication.processEvents()
        time.sleep(0.02)
    QApplication.processEvents()


def run_demo(headless: bool, out_dir: Path) -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-medimp demo", show=True)
    viewer.window.resize(1500, 950)
    report = show_sample(viewer)
    widget = dock_prefilled(viewer)
    QApplication.processEvents()
    viewer.reset_view()
    if not headless:
        napari.run()
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    widget.analyze()
    wait_for(widget)
    widget.saliency()
    wait_for(widget)
    viewer.layers.selection.active = viewer.layers[widget.layer_combo.currentText()]
    for _ in range(5):
        QApplication.processEvents()
    files = widget.write_export(out_dir)  # the demo's own folder
    if files is None:
        print(f"medimp demo: the analysis did not complete: {widget.status_label.text()}")
        viewer.close()
        return 1
    screenshot = out_dir / "demo_screenshot.png"
    viewer.screenshot(str(screenshot), canvas_only=False)
    widget.save_panel(out_dir / "demo_widget.png")
    (out_dir / "demo_report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_dir / "demo_report.md").write_text(_markdown(report))
    from .core.report import report_summary

    print(_markdown(report))
    print(report_summary(json.loads(Path(files["json"]).read_text()), files))
    print(f"screenshot: {screenshot}\nanalysis report: {files['json']}\ncurves report: {out_dir / 'demo_report.md'}")
    viewer.close()
    return 0
