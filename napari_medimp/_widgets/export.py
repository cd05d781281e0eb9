"""The panel's export: the report, figures, screenshot and saliency maps of the current analysis in a new
folder."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog

from ..core.identity import ExamIdentity


class Export:
    """The export of the MEDIMP panel (a part of :class:`~napari_medimp._widgets.medimp.MedimpWidget`)."""

    # --------------------------------------------------------------------------------------- export
    def _choose_export_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export MEDIMP report to folder")
        if folder:
            self.export_report(folder)

    def export_report(self, folder) -> dict[str, Path] | None:
        """Report (JSON, CSV and PDF), results figure (PNG), viewer screenshot (PNG) and the saliency maps
        (NIfTI, in the ROI's geometry) of the current layer's result, into a new folder inside ``folder``
        named after the patient, exam and time (an earlier export is never mixed with or replaced)."""
        from datetime import datetime

        from ..core.outputs import new_export_folder

        result = self.current_result()
        if result is None:
            self._notify_error("nothing to export: analyse the current layer first")
            return None
        patient = ExamIdentity.from_volume(result.request.volume).patient
        who = "-".join(str(v) for v in (patient, result.analysis.exam) if v)
        name = f"{who or 'medimp'}-{datetime.fromtimestamp(result.finished):%Y%m%d-%H%M%S}"
        try:
            folder = new_export_folder(folder, name)
        except (OSError, ValueError) as exc:
            self._notify_error(f"export failed: {exc}")
            return None
        return self.write_export(folder)

    def write_export(self, folder) -> dict[str, Path] | None:
        """The current layer's export written into ``folder`` itself (a folder the caller owns)."""
        result = self.current_result()
        if result is None:
            self._notify_error("nothing to export: analyse the current layer first")
            return None
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            screenshot = folder / "medimp_screenshot.png"
            self.viewer.screenshot(str(screenshot), canvas_only=False)
            files = result.write(folder, extra={"screenshot": screenshot})
        except (OSError, ValueError) as exc:
            self._notify_error(f"export failed: {exc}")
            return None
        self.status_label.setText(f"report written to {folder}")
        return files

    def save_panel(self, path) -> Path:
        """PNG of the whole panel (all sections, not only the part scrolled into view)."""
        path = Path(path)
        self._content.grab().save(str(path))
        return path
