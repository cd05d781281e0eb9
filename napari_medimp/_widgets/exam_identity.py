"""Which patient and exam the current layer is, as its data say (:class:`~napari_medimp.core.identity.ExamIdentity`),
where each clinical value came from, and the cohort table's values of that patient."""

from __future__ import annotations

from pathlib import Path

from ..core.identity import TYPED, ExamIdentity, table_source
from ._panel_util import _escape
from .clinical_form import CLINICAL_FIELDS, FIELD_TITLES, _same_value

#: where a value typed in the panel comes from
TYPED_HERE = f"{TYPED} in the MEDIMP widget"


class ExamIdentityPart:
    """The current exam's identity in the MEDIMP panel (a part of :class:`~napari_medimp._widgets.medimp.MedimpWidget`)."""

    # ------------------------------------------------------------------------------ exam identity
    def _take_identity(self, layer) -> None:
        """The exam and patient come from the layer's data (sidecar, DICOM tags, cohort folders:
        :class:`~napari_medimp.core.identity.ExamIdentity`); another patient's values never stay in the form;
        the cohort's clinical.csv fills the form when it has the patient."""
        who = ExamIdentity.from_layer_metadata(layer.metadata)
        meta = layer.metadata.get("dce_metadata") or {}
        source = str(layer.metadata.get("source") or meta.get("source") or "")
        self._identity = {"exam": who.exam, "patient": who.patient, "table": None, "line": None,
                          "table_values": {}, "layer": layer.name, "who": who}
        if who.patient != self._form_patient:
            self.prefill(**{name: "" for name in CLINICAL_FIELDS})
            self._form_patient = who.patient
        if who.exam:
            self.fields["exam"].value = who.exam
        if who.patient and source and who.exam:
            self._fill_from_table(Path(source), who.patient, who.exam)
        self.exam_confirm.setChecked(False)
        self._show_identity()

    def _cohort_table(self, source, patient: str) -> tuple[dict, Path | None]:
        """The cohort's ``clinical.csv`` beside ``source`` (rows, path); ``({}, None)`` when there is none, or
        after saying why it could not be read."""
        from ..core.io.cohort import cohort_clinical_table

        try:
            return cohort_clinical_table(Path(source))
        except (OSError, ValueError) as exc:
            self._notify_warning(f"clinical values of {patient} not read from the cohort's table: {exc}")
            return {}, None

    def _fill_from_table(self, source: Path, patient: str, exam: str) -> None:
        from ..core.clinical import ClinicalRecord
        from ..core.io.cohort import cohort_clinical_row

        try:
            row, table, line = cohort_clinical_row(source, patient)
            if row is None:
                return
            record = ClinicalRecord.from_csv_row(row, exam)
        except (OSError, ValueError) as exc:
            self._notify_warning(f"clinical values of {patient} not read from the cohort's table: {exc}")
            return
        self.prefill(donor_age=record.donor_age, gfr=record.gfr, creatinine=list(record.creatinine),
                     creatinine_std=record.creatinine_std, creatinine_unit="umol/L")
        self._identity.update(table=str(table), line=line,
                              table_values={name: str(self.fields[name].value) for name in CLINICAL_FIELDS})
        self._show_identity()

    def value_sources(self) -> dict[str, str]:
        """Where each clinical value of the form came from: the cohort's table (``clinical.csv line N``) while
        it still holds the value filled in from there, else typed in the widget."""
        identity, out = self._identity, {}
        table_values = identity.get("table_values") or {}
        for name in CLINICAL_FIELDS:
            filled = table_values.get(name)
            current = str(self.fields[name].value)
            if filled and _same_value(current, filled):
                out[name] = table_source(identity["table"], identity.get("line"))
            else:
                out[name] = TYPED_HERE
        return out

    def values_differing(self) -> dict[str, dict]:
        """The clinical values typed against the cohort's table: name -> ``{"source", "value"}`` of the
        table's value (empty when the form agrees with the table, or has none)."""
        identity, out = self._identity, {}
        for name, filled in (identity.get("table_values") or {}).items():
            if filled and not _same_value(str(self.fields[name].value), filled):
                out[name] = {"source": table_source(identity["table"], identity.get("line")), "value": filled}
        return out

    def exam_source(self) -> str:
        """Where the form's exam came from: the image's data when it agrees with it, else typed."""
        who = self._identity.get("who")
        if who is not None and who.exam and str(self.fields["exam"].value) == who.exam:
            return who.exam_from or TYPED_HERE
        return TYPED_HERE

    def exam_mismatch(self) -> str | None:
        """Why the form's exam is not the layer's (None when they agree or the layer does not say)."""
        exam = self._identity.get("exam")
        typed = str(self.fields["exam"].value)
        if not exam or typed == exam:
            return None
        who = self._identity.get("who")
        where = f"from its {who.exam_from}" if who is not None and who.exam_from else "from its folder or file"
        return (f"The form says exam {typed}, but layer '{self._identity['layer']}' is exam {exam} ({where}). "
                f"Choose {exam} above, or tick the box to analyse it as {typed}.")

    def values_mismatch(self) -> str | None:
        """The clinical values typed against the cohort's table, in words (None when none)."""
        differing = self.values_differing()
        if not differing:
            return None
        exam = self._identity.get("exam") or str(self.fields["exam"].value)
        parts = []
        for name, other in differing.items():
            typed = str(self.fields[name].value).strip()
            title = FIELD_TITLES[name]
            parts.append(f"{title} {typed} typed here, {other['source']} says {other['value']} at {exam}" if typed
                         else f"{title} left empty, {other['source']} says {other['value']} at {exam}")
        return ("; ".join(parts) + ". Tick the box to analyse with the values typed above, or "
                "retype the table's.")

    def _show_identity(self) -> None:
        identity, lines = self._identity, []
        who = identity.get("who")
        if identity.get("patient") or identity.get("exam"):
            text = f"patient {identity['patient']}, " if identity.get("patient") else ""
            where = []
            if who is not None and who.patient_from:
                where.append(f"patient from the {who.patient_from}")
            if who is not None and who.exam_from:
                where.append(f"exam from the {who.exam_from}")
            lines.append(_escape(f"Image: {text}exam {identity.get('exam') or 'not stated'}"
                                 + (f" ({'; '.join(where)})." if where else ".")))
        differing = self.values_mismatch() if identity.get("table") else None
        if identity.get("table") and differing is None:
            lines.append(_escape(f"Values filled in from {table_source(identity['table'], identity.get('line'))} "
                                 "of the cohort; edit them to use others."))
        mismatch = self.exam_mismatch()
        for warning in (mismatch, differing):
            if warning:
                lines.append(f"<span style='color:#ffb347'>{_escape(warning)}</span>")
        self.identity_label.setText("<br>".join(lines))
        self.identity_label.setVisible(bool(lines))
        needs = mismatch is not None or differing is not None
        self.exam_confirm.setText("Analyse as the exam typed above" if differing is None else
                                  "Analyse with the values typed above" if mismatch is None else
                                  "Analyse with the exam and values typed above")
        self.exam_confirm.setVisible(needs)
        if not needs:
            self.exam_confirm.setChecked(False)
