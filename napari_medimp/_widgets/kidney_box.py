"""The kidney box: from a Shapes layer, or found from the enhancement and shown as an editable box."""

from __future__ import annotations

import numpy as np

from .._layers import box_rectangle, roi_from_vertices
from ._panel_util import _escape, _key, _spatial_axes

AUTO_ROI = "automatic (from the enhancement)"


class KidneyBox:
    """The kidney box of the MEDIMP panel (a part of :class:`~napari_medimp._widgets.medimp.MedimpWidget`)."""

    # ------------------------------------------------------------------------------------------- ROI
    def _roi_source(self, layer):
        """(RoiBox or None for automatic, description)."""
        choice = self.roi_combo.currentText()
        if not choice or choice == AUTO_ROI or choice not in self.viewer.layers:
            auto = self._auto_rois.get(_key(layer))
            return auto, "automatic" if auto is None else "automatic (shown)"
        shapes = self.viewer.layers[choice]
        if len(shapes.data) == 0:
            raise ValueError(f"Shapes layer {choice!r} has no box; draw a rectangle around the kidney")
        selected = sorted(shapes.selected_data)
        vertices = np.asarray(shapes.data[selected[-1] if selected else len(shapes.data) - 1], dtype=float)
        world = np.array([shapes.data_to_world(v) for v in vertices])
        t0 = np.zeros((len(world), max(0, layer.ndim - world.shape[1])))
        voxels = np.array([layer.world_to_data(w) for w in np.hstack([t0, world])])[:, -3:]
        fallback = shapes.metadata.get("medimp_roi")
        if fallback is not None:
            from ..core.preprocess import RoiBox

            fallback = RoiBox.from_sequence(fallback)
        else:
            fallback = self._auto_rois.get(_key(layer))
        return roi_from_vertices(voxels, layer.data.shape[-3:], fallback), f"from {choice!r}"

    def _update_roi_label(self) -> None:
        layer = self.current_layer()
        if layer is None:
            self.roi_label.setText("")
            return
        try:
            roi, how = self._roi_source(layer)
        except ValueError as exc:
            self.roi_label.setText(f"<span style='color:#ff6b6b'>{_escape(str(exc))}</span>")
            return
        if roi is None:
            self.roi_label.setText("found from the enhancement when you analyse")
        else:
            self.roi_label.setText(f"{how}: z {roi.z0}-{roi.z1 - 1}, y {roi.y0}-{roi.y1 - 1}, "
                                   f"x {roi.x0}-{roi.x1 - 1} (voxels)")

    def show_kidney_box(self) -> None:
        """Find the kidney (worker thread) and show the box as an editable Shapes layer."""
        layer = self.current_layer()
        if layer is None:
            self._notify_error("choose a 4D DCE layer first")
            return
        try:
            volume = self._volume(layer)
        except ValueError as exc:
            self._notify_error(str(exc))
            return
        card = getattr(self, "_card", None)

        def job():
            from ..core.preprocess import PreprocessConfig, find_kidney_roi

            config = PreprocessConfig.from_dict(card["preprocessing"]) if card else PreprocessConfig()
            return find_kidney_roi(volume, margin_mm=config.roi_margin_mm, baseline_frames=config.baseline_frames)

        self._start(job, lambda roi: self._add_box_layer(layer, roi), "finding the kidney")

    def _add_box_layer(self, layer, roi) -> None:
        if not self._layer_alive(layer):
            self._notify_warning(f"layer {layer.name!r} was removed; kidney box discarded")
            return
        self._auto_rois[_key(layer)] = roi
        name = f"kidney box · {layer.name}"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self.viewer.add_shapes(
            [box_rectangle(roi)], shape_type="rectangle", ndim=3, name=name, edge_color="#ffd700",
            face_color="transparent", edge_width=1.0, scale=tuple(layer.scale[-3:]),
            translate=tuple(layer.translate[-3:]), metadata={"medimp_roi": roi.to_list(), "source_layer": layer.name},
            **_spatial_axes(layer))
        self.viewer.layers.selection.active = layer
        self.roi_combo.setCurrentText(name)
        self._update_roi_label()
