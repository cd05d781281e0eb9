"""The panel's clinical values and prompt: the form (exam, donor age, GFR, creatinine), its checks and
the prompt built from it (editable; a typed prompt is kept)."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import ComboBox, Container, Label, LineEdit
from qtpy.QtWidgets import (
    QCheckBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from ..core.clinical import check_form
from ..core.prompts import ATTRIBUTES, N_VARIANTS, build_prompt
from ..core.terms import DEFAULT_EXAM, EXAMS
from ._panel_util import _wrapping

FIELD_UNITS = {"donor_age": "years", "gfr": "mL/min/1.73 m²", "creatinine": "", "creatinine_std": "same unit"}
FIELD_HINTS = {"donor_age": "age of the kidney donor", "gfr": "estimated GFR at this exam",
               "creatinine": "serum creatinine values up to this exam, separated by ';' (e.g. 120; 135; 150)",
               "creatinine_std": "creatinine variability (standard deviation), when the values are not at hand"}
FIELD_PLACEHOLDERS = {"donor_age": "missing", "gfr": "missing", "creatinine": "e.g. 120; 135; 150",
                      "creatinine_std": "missing"}
FIELD_TITLES = {"exam": "Exam", "donor_age": "Donor age", "gfr": "GFR", "creatinine": "Creatinine",
                "creatinine_std": "Creat. std", "creatinine_unit": "Creatinine unit"}
#: the form's clinical values (the exam aside)
CLINICAL_FIELDS = ("donor_age", "gfr", "creatinine", "creatinine_std")


def _same_value(a: str, b: str) -> bool:
    """Whether two form texts hold the same value(s) (``48`` and ``48.0``; ``120; 135`` and ``120;135``)."""
    import re

    def numbers(text: str):
        parts = [p for p in re.split(r"[;\s]+", str(text).strip()) if p]
        try:
            return tuple(float(p) for p in parts)
        except ValueError:
            return None

    left, right = numbers(a), numbers(b)
    if left is None or right is None:
        return str(a).strip() == str(b).strip()
    return left == right


class ClinicalForm:
    """The clinical-values form and the prompt of the MEDIMP panel (a part of :class:`~napari_medimp._widgets.medimp.MedimpWidget`)."""

    def _build_clinical_group(self) -> QGroupBox:
        box = QGroupBox("Clinical values")
        self.fields: dict[str, Any] = {"exam": ComboBox(choices=list(EXAMS), value=DEFAULT_EXAM, label=FIELD_TITLES["exam"])}
        self.errors: dict[str, Label] = {}
        rows: list = [self.fields["exam"]]
        self.errors["exam"] = Label(value="", label="")
        rows.append(self.errors["exam"])
        for name in ("donor_age", "gfr", "creatinine", "creatinine_std"):
            edit = LineEdit(value="", label=FIELD_TITLES[name], tooltip=FIELD_HINTS[name])
            edit.native.setPlaceholderText(FIELD_PLACEHOLDERS[name])
            self.fields[name] = edit
            parts = [edit]
            if FIELD_UNITS[name]:
                parts.append(Label(value=FIELD_UNITS[name]))
            if name == "creatinine":
                self.fields["creatinine_unit"] = ComboBox(choices=["umol/L", "mg/dL"], value="umol/L",
                                                          tooltip="unit of the creatinine values and std")
                parts.append(self.fields["creatinine_unit"])
            rows.append(Container(widgets=parts, layout="horizontal", labels=False, label=FIELD_TITLES[name]))
            self.errors[name] = Label(value="", label="")
            rows.append(self.errors[name])
        self.errors["creatinine_unit"] = self.errors["creatinine"]
        self.form = Container(widgets=rows)
        self.form.margins = (0, 0, 0, 0)
        for row in rows:
            if isinstance(row, Container):
                row.margins = (0, 0, 0, 0)
        for label in set(self.errors.values()):
            label.native.setStyleSheet("color: #ff6b6b;")
            _wrapping(label.native)
            label.visible = False
        for widget in self.fields.values():
            widget.changed.connect(self._on_form_changed)
        layout = QVBoxLayout(box)
        layout.addWidget(self.form.native)
        self.identity_label = QLabel("")
        _wrapping(self.identity_label)
        self.identity_label.setVisible(False)
        layout.addWidget(self.identity_label)
        self.exam_confirm = QCheckBox("Analyse as the exam typed above")
        self.exam_confirm.setToolTip("the image says another exam; tick to analyse it as the exam in the form")
        self.exam_confirm.setVisible(False)
        self.exam_confirm.toggled.connect(lambda *_: self._update_buttons())
        layout.addWidget(self.exam_confirm)
        return box

    def _build_prompt_group(self) -> QGroupBox:
        box = QGroupBox("Prompt")
        layout = QVBoxLayout(box)
        row = QHBoxLayout()
        row.addWidget(QLabel("Paraphrase"))
        self.variant_spin = QSpinBox()
        self.variant_spin.setRange(1, N_VARIANTS)
        self.variant_spin.setToolTip(f"one of the {N_VARIANTS} paraphrases of each sentence")
        self.variant_spin.valueChanged.connect(lambda *_: self._regenerate_prompt(force=False))
        row.addWidget(self.variant_spin)
        row.addStretch(1)
        layout.addLayout(row)
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setPlaceholderText("type clinical values above, or a prompt here")
        self.prompt_edit.setMaximumHeight(90)
        self.prompt_edit.textChanged.connect(self._on_prompt_edited)
        layout.addWidget(self.prompt_edit)
        row = QHBoxLayout()
        self.prompt_state = QLabel("")
        row.addWidget(self.prompt_state)
        row.addStretch(1)
        self.regenerate_button = QPushButton("Regenerate")
        self.regenerate_button.setToolTip("replace the text by the prompt generated from the values")
        self.regenerate_button.clicked.connect(lambda: self._regenerate_prompt(force=True))
        row.addWidget(self.regenerate_button)
        layout.addLayout(row)
        return box

    # ------------------------------------------------------------------------------------- clinical
    def form_values(self) -> dict[str, Any]:
        return {name: widget.value for name, widget in self.fields.items()}

    def prefill(self, **values) -> None:
        """Set form fields (exam, donor_age, gfr, creatinine, creatinine_std, creatinine_unit)."""
        for name, value in values.items():
            if name not in self.fields:
                raise ValueError(f"unknown clinical field {name!r}; known: {', '.join(self.fields)}")
            widget = self.fields[name]
            if isinstance(widget, LineEdit):
                if isinstance(value, list | tuple):
                    value = "; ".join(f"{v:g}" for v in value)
                value = "" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))
            widget.value = value
        self._on_form_changed()

    def validate_form(self):
        """The clinical record, or ``None`` after showing each invalid field's message next to it."""
        record, errors = check_form(self.form_values())
        shown = {id(label): "" for label in self.errors.values()}
        for name, message in errors.items():
            label = self.errors.get(name)
            if label is not None:
                shown[id(label)] = (shown[id(label)] + " " + message).strip()
        for label in set(self.errors.values()):
            label.value = shown[id(label)]
            label.visible = bool(shown[id(label)])
        return record, errors

    def _on_form_changed(self, *_) -> None:
        self.validate_form()
        self._regenerate_prompt(force=False)
        if hasattr(self, "identity_label"):
            self._show_identity()

    def _attributes(self) -> tuple[str, ...]:
        card = getattr(self, "_card", None) or {}
        attributes = ((card.get("training") or {}).get("config") or {}).get("attributes")
        return tuple(attributes) if attributes else ATTRIBUTES

    def generated_prompt(self) -> str | None:
        record, errors = check_form(self.form_values())
        if record is None:
            return None
        return build_prompt(record, variant=self.variant_spin.value() - 1, attributes=self._attributes())

    def _regenerate_prompt(self, force: bool) -> None:
        text = self.generated_prompt()
        edited = self.prompt_edit.toPlainText() != self._prompt_generated
        if text is None:  # an invalid value: a generated sentence built from it must not stay on screen
            if not edited:
                self._prompt_generated = ""
                self._setting_prompt = True
                self.prompt_edit.setPlainText("")
                self._setting_prompt = False
                self.prompt_state.setText("waiting for valid clinical values")
                self.regenerate_button.setEnabled(False)
            return
        self._prompt_generated = text
        if force or not edited:
            self._setting_prompt = True
            self.prompt_edit.setPlainText(text)
            self._setting_prompt = False
        self._on_prompt_edited()

    def _on_prompt_edited(self) -> None:
        if self._setting_prompt:
            return
        edited = self.prompt_edit.toPlainText() != self._prompt_generated
        self.prompt_state.setText("edited by hand" if edited else "generated")
        self.regenerate_button.setEnabled(edited)

    def prompt(self) -> str | None:
        text = self.prompt_edit.toPlainText().strip()
        return text or None
