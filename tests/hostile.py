"""A corpus of hostile and broken inputs, as a careless or unlucky user produces them (small files only).

Every case says what a careful program must do with it: ``refuse`` (one line naming the problem, exit 1 or
2, nothing written), ``note`` (a result, with the reader's notice in the report) or ``read`` (a result).
``words`` is a regular expression the message or notice must contain. ``tests/test_hostile_corpus.py``
runs the command line on every case and counts tracebacks, wrong outcomes and lost outputs.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from helpers import kidney_volume

from napari_medimp.core.io import save_dce, save_nifti


@dataclass
class Case:
    family: str
    name: str
    path: Path
    expect: str  # "refuse", "note" or "read"
    words: str = ""
    #: extra command-line arguments (e.g. --labels FILE)
    args: list[str] = field(default_factory=list)


def _volume():
    return kidney_volume(seed=5, n_frames=6)


def _nifti(folder: Path, name: str, data_xyzt, affine=None, dtype=np.float32) -> Path:
    path = folder / name
    affine = np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(data_xyzt, dtype=dtype), affine), str(path))
    return path


def _patch(path: Path, offset: int, fmt: str, *values) -> Path:
    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, offset, *values)
    path.write_bytes(bytes(raw))
    return path


def nifti_cases(root: Path) -> list[Case]:
    folder = root / "nifti"
    folder.mkdir(parents=True)
    vol = _volume()
    xyzt = vol.data.transpose(3, 2, 1, 0)
    cases = [Case("nifti", "clean 4D file", save_dce(vol, folder / "clean.nii.gz"), "read")]

    whole = save_dce(vol, folder / "truncated.nii.gz")
    whole.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    cases.append(Case("nifti", "truncated .nii.gz", whole, "refuse", r"truncated|corrupt|gzip"))

    raw = _nifti(folder, "truncated.nii", xyzt)
    raw.write_bytes(raw.read_bytes()[:2000])
    cases.append(Case("nifti", "truncated .nii", raw, "refuse", r"truncated"))

    text = folder / "notes.nii.gz"
    text.write_text("this is not an image\n")
    cases.append(Case("nifti", "text file named .nii.gz", text, "refuse", r"not a readable NIfTI|gzip"))

    cases.append(Case("nifti", "3D image", _nifti(folder, "three_d.nii", xyzt[..., 0]), "refuse", r"3D image"))
    cases.append(Case("nifti", "5D image", _nifti(folder, "five_d.nii", np.stack([xyzt, xyzt], axis=-1)),
                      "refuse", r"5D image"))
    cases.append(Case("nifti", "one time frame", _nifti(folder, "one_frame.nii", xyzt[..., :1]), "refuse",
                      r"one frame"))

    huge = _nifti(folder, "huge_header.nii", xyzt)
    _patch(huge, 42, "<4h", 2000, 2000, 2000, 50)  # dim[1:5]: 400 G voxels in a 1 MB file
    cases.append(Case("nifti", "header claiming 400 G voxels", huge, "refuse", r"header needs|truncated"))

    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    img = nib.Nifti1Image(xyzt, affine)
    img.set_qform(affine, code=1)
    img.set_sform(None, code=0)
    q = folder / "qform_pixdim0.nii"
    nib.save(img, str(q))
    _patch(q, 80, "<3f", 0.0, 0.0, 0.0)
    cases.append(Case("nifti", "qform only, voxel size 0", q, "refuse", r"no voxel size"))

    bare = _nifti(folder, "no_orientation.nii", xyzt)
    _patch(bare, 252, "<hh", 0, 0)
    cases.append(Case("nifti", "neither qform nor sform", bare, "note", r"no position or orientation"))

    img = nib.Nifti1Image(xyzt, affine)
    shifted = affine.copy()
    shifted[2, 3] += 9.0
    img.set_sform(affine, code=2)
    img.set_qform(shifted, code=1)
    two = folder / "qform_sform.nii"
    nib.save(img, str(two))
    cases.append(Case("nifti", "qform and sform disagree", two, "note", r"qform and sform place the image"))

    nan = xyzt.copy()
    nan[:3, :3, :3, 2] = np.nan
    cases.append(Case("nifti", "some NaN voxels", _nifti(folder, "some_nan.nii", nan), "note", r"NaN"))
    cases.append(Case("nifti", "every voxel NaN", _nifti(folder, "all_nan.nii", np.full_like(xyzt, np.nan)),
                      "refuse", r"NaN"))
    cases.append(Case("nifti", "constant image", _nifti(folder, "constant.nii", np.ones_like(xyzt)), "refuse",
                      r"constant"))

    for name, times, words in (("decreasing", [50, 40, 30, 20, 10, 0], r"do not increase"),
                               ("all zero", [0] * 6, r"all equal"),
                               ("1e30", [0, 1e30, 2e30, 3e30, 4e30, 5e30], r"more than a day")):
        path = save_dce(vol, folder / f"times_{name.replace(' ', '_')}.nii.gz")
        (folder / f"times_{name.replace(' ', '_')}.json").write_text(json.dumps({"FrameTimes": times}))
        cases.append(Case("nifti", f"frame times {name}", path, "note", words))

    side = save_dce(vol, folder / "bad_sidecar.nii.gz")
    (folder / "bad_sidecar.json").write_text("{not json")
    cases.append(Case("nifti", "sidecar not JSON", side, "note", r"sidecar ignored"))

    big = _volume()
    big_voxels = save_nifti(folder / "voxels_100mm.nii.gz", big.data, np.diag([100.0, 100.0, 100.0, 1.0]))
    cases.append(Case("nifti", "100 mm voxels", big_voxels, "refuse", r"would need .* more than the budget"))

    # silently wrong once, refused or said now
    flipped = save_dce(vol, folder / "flipped_byte.nii.gz")
    raw_bytes = bytearray(flipped.read_bytes())
    raw_bytes[len(raw_bytes) // 2] ^= 0x01
    flipped.write_bytes(bytes(raw_bytes))
    cases.append(Case("nifti", "one byte flipped in a .nii.gz", flipped, "refuse", r"gzip stream is corrupt"))
    cases.append(Case("nifti", "vox_offset 0", _patch(_nifti(folder, "vox_offset0.nii", xyzt), 108, "<f", 0.0),
                      "refuse", r"vox_offset"))
    rgb = np.zeros(xyzt.shape[:3] + (3,), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, affine), str(folder / "rgb.nii"))
    cases.append(Case("nifti", "colour (RGB) voxels", folder / "rgb.nii", "refuse", r"colour \(RGB\)"))
    cases.append(Case("nifti", "complex voxels", _nifti(folder, "complex.nii", xyzt, dtype=np.complex64), "refuse",
                      r"complex voxels"))
    deep = save_dce(vol, folder / "deep_sidecar.nii.gz")
    (folder / "deep_sidecar.json").write_text("[" * 100_000 + "]" * 100_000)
    cases.append(Case("nifti", "sidecar nested 100,000 deep", deep, "note", r"nested too deeply"))
    hertz = _nifti(folder, "hertz.nii", xyzt)
    _patch(hertz, 123, "<B", 0x20 | 2)  # xyzt_units: mm, Hz
    cases.append(Case("nifti", "frame spacing in Hz", hertz, "note", r"(?i)hz|hertz|not a time"))

    labels = np.arange(20 * 40 * 48, dtype=np.int32).reshape(20, 40, 48)
    many = save_nifti(folder / "many_labels.nii.gz", labels, vol.affine, dtype=np.int32)
    cases.append(Case("labels", "label map with 38,399 values", save_dce(vol, folder / "for_labels.nii.gz"),
                      "refuse", r"different values; at most 64", ["--labels", str(many)]))
    small = save_nifti(folder / "small_labels.nii.gz", np.ones((4, 4, 4), np.uint8), vol.affine, dtype=np.uint8)
    cases.append(Case("labels", "label map on another grid", folder / "for_labels.nii.gz", "refuse",
                      r"does not match", ["--labels", str(small)]))
    return cases


def dicom_cases(root: Path) -> list[Case]:
    from pydicom.uid import generate_uid
    from test_io_dicom import COLS, ORIGIN, ROWS, _value, make_slice, write_series

    folder = root / "dicom"
    cases = []

    def series(name, **kwargs):
        write_series(folder / name, n_phases=3, n_slices=6, **kwargs)
        return folder / name

    box = ["--roi", "0", "6", "0", "4", "0", "6"]  # the whole series: its stripes do not look like a kidney

    cases.append(Case("dicom", "clean series", series("clean", seed=1), "read", args=box))
    cases.append(Case("dicom", "NaN rescale slope", series("nan_slope", seed=2, RescaleSlope="nan"), "refuse",
                      r"RescaleSlope is 'nan'"))
    cases.append(Case("dicom", "missing ImagePositionPatient",
                      series("no_position", seed=3, per_file=lambda t, k: {"drop": ("ImagePositionPatient",)}
                             if (t, k) == (1, 2) else {}), "refuse", r"without position tags"))
    clock = ["235950", "000005", "000020"]
    cases.append(Case("dicom", "acquisition across midnight, no date",
                      series("midnight", seed=4, phase_tags=lambda t: {"AcquisitionTime": clock[t]}), "note",
                      r"cross midnight", box))
    same = folder / "same_position"
    same.mkdir(parents=True)
    uid = generate_uid()
    for t in range(3):
        for k in range(6):
            make_slice(same / f"IM{t}{k}.dcm", series_uid=uid, position=ORIGIN,
                       pixels=np.full((ROWS, COLS), _value(t, k)), instance=6 * t + k + 1,
                       TemporalPositionIdentifier=t + 1)
    cases.append(Case("dicom", "every slice at one position", same, "refuse", r"share an ImagePositionPatient"))
    cut = series("truncated_pixels", seed=5)
    victim = sorted(cut.iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:-20])
    cases.append(Case("dicom", "truncated pixel data", cut, "refuse", r"pixel data|truncated"))
    text = folder / "text_named_dcm"
    text.mkdir()
    (text / "IM0001.dcm").write_text("not DICOM")
    cases.append(Case("dicom", "text file named .dcm", text / "IM0001.dcm", "refuse", r"DICOM|unsupported"))
    return cases


def folder_cases(root: Path) -> list[Case]:
    folder = root / "folders"
    empty = folder / "empty"
    empty.mkdir(parents=True)
    other = folder / "unrelated"
    other.mkdir()
    (other / "readme.txt").write_text("hello")
    (other / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 100)
    return [Case("folder", "empty folder", empty, "refuse", r"no NIfTI or DICOM images found|empty"),
            Case("folder", "folder of unrelated files", other, "refuse", r"no NIfTI or DICOM images found")]


def image_cases(root: Path) -> list[Case]:
    """Every case given as the image of ``medimp analyze``."""
    return nifti_cases(root) + dicom_cases(root) + folder_cases(root)


def model_cases(root: Path, good_model: Path) -> list[Case]:
    """Model files given as ``--model`` (a good model's card and weights, damaged)."""
    import pickle
    import shutil

    folder = root / "models"
    folder.mkdir(parents=True)
    weights, card = good_model, good_model.with_suffix(".json")

    def copy(name: str) -> Path:
        shutil.copy(weights, folder / f"{name}.safetensors")
        shutil.copy(card, folder / f"{name}.json")
        return folder / f"{name}.safetensors"

    cases = []
    pt = folder / "model.pt"
    pt.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    cases.append(Case("model", "pickle .pt", pt, "refuse", r"pickle|not .*safetensors|\.safetensors"))
    cut = copy("truncated")
    cut.write_bytes(cut.read_bytes()[:1000])
    cases.append(Case("model", "truncated weights", cut, "refuse", r"safetensors|truncated|modified"))
    bare = copy("no_card")
    (folder / "no_card.json").unlink()
    cases.append(Case("model", "weights without card", bare, "refuse", r"card .JSON. not found"))
    for name, edit, words in (
        ("wide", lambda c: c["architecture"].update(embed_dim=10**9), r"embed_dim must be a whole number"),
        ("nested", lambda c: c.update(training=json.loads('{"a":' * 40 + "1" + "}" * 40)), r"nested more than"),
        ("heads", lambda c: c.update(prognosis=[1]), r"'prognosis' section is a list"),
    ):
        path = copy(name)
        content = json.loads((folder / f"{name}.json").read_text())
        edit(content)
        (folder / f"{name}.json").write_text(json.dumps(content))
        cases.append(Case("model", f"card: {name}", path, "refuse", words))
    deep = copy("deep")
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    cases.append(Case("model", "card nested 100,000 deep", deep, "refuse", r"nested too deeply"))
    return cases


def clinical_cases(root: Path) -> list[Case]:
    """Two-patient cohorts given to ``medimp predict``, each with a damaged ``clinical.csv``; ``note`` means
    a result for the readable rows, the skipped one listed."""
    header = "patient_id,donor_age,gfr_D30,creatinine_std_D30"
    rows = [
        ("duplicate ids", "refuse", r"duplicate", f"{header}\nP1,50,74,10\nP2,60,40,20\nP1,50,12,10\n"),
        ("byte-order mark and ;", "read", "", "\ufeff" + f"{header}\nP1,50,74,10\nP2,60,40,20\n".replace(",", ";")),
        ("absurd GFR", "note", r"skipped P1/D30", f"{header}\nP1,50,74000,10\nP2,60,40,20\n"),
        ("formula in a cell", "note", r"skipped P1/D30", f"{header}\nP1,=1+1,74,10\nP2,60,40,20\n"),
        ("no patient_id column", "refuse", r"patient_id", "id;age\nP1;50\n"),
        ("ids in lower case", "refuse", r"none of its patient ids matches", f"{header}\np1,50,74,10\np2,60,40,20\n"),
        ("header only", "refuse", r"(?i)no patient|header", f"{header}\n"),
        ("GFR written 4_0", "note", r"skipped P1/D30", f"{header}\nP1,50,4_0,10\nP2,60,40,20\n"),
        ("two values in one quoted cell", "note", r"skipped P1/D30", f'{header}\nP1,50,"74\n75",10\nP2,60,40,20\n'),
    ]
    cases = []
    for name, expect, words, text in rows:
        folder = root / "clinical" / "".join(c if c.isalnum() else "_" for c in name)
        for patient in ("P1", "P2"):
            save_dce(_volume(), folder / patient / "D30" / "dce" / "dce.nii.gz")
        (folder / "clinical.csv").write_text(text, encoding="utf-8")
        cases.append(Case("clinical", name, folder, expect, words))
    return cases
