"""The PDFs a clinician can file, A4 portrait: one analysis of an exam (:func:`write_pdf`) and a patient's
follow-up (:func:`write_patient_pdf`).

``layout``: pages, margins, type, text wrapping and the flow of text down a page, writing a document;
``slices``: which slices to show and the pages that draw them with their overlays; ``exam_pages``: the pages
of an analysis; ``patient_pages``: the pages of a patient's follow-up; ``words``: clinical values and checks
in words. Each ``*_pages`` function returns the pages (matplotlib figures, object-oriented API only: no
pyplot, no Qt) with every text they show, for :func:`pdf_text`."""

from __future__ import annotations

from ..outputs import PDF_FILE
from .exam_pages import NOT_STATED, exam_identity, report_pages, write_pdf
from .layout import Page, pdf_text
from .patient_pages import PATIENT_TITLE, patient_report_pages, write_patient_pdf
from .slices import key_slices, orientation_letters

__all__ = [
    "NOT_STATED",
    "PATIENT_TITLE",
    "PDF_FILE",
    "Page",
    "exam_identity",
    "key_slices",
    "orientation_letters",
    "pdf_text",
    "report_pages",
    "patient_report_pages",
    "write_patient_pdf",
    "write_pdf",
]
