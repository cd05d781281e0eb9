"""Clinical record validation (core.clinical), MEDIMP bins, prompt templates/variants (core.prompts) and the
paraphrase generator (src_train.paraphrases)."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest

from napari_medimp.core import prompts as P
from napari_medimp.core.clinical import ClinicalRecord, ClinicalValueError
from napari_medimp.core.prompts import (
    ATTRIBUTES,
    GFR_BINS,
    N_VARIANTS,
    TEMPLATES,
    bin_prompts,
    build_prompt,
    choose_variant,
    creatinine_bin,
    donor_age_bin,
    exam_phrase,
    gfr_bin,
    prompt_variants,
    slot_values,
)
from napari_medimp.core.terms import EXAMS
from src_train.paraphrases import filter_paraphrases, generate_paraphrases, is_valid_paraphrase

FULL = dict(exam="M3", donor_age=54, gfr=38.0, creatinine=[100.0, 200.0, 310.0])


# ------------------------------------------------------------------------------------------ bins
@pytest.mark.parametrize(
    "value, expected",
    [
        (0.0, "extremely low"), (14.999, "extremely low"), (15.0, "very low"), (29.999, "very low"),
        (30.0, "low"), (44.999, "low"), (45.0, "medium"), (59.999, "medium"), (60.0, "high"), (150.0, "high"),
    ],
)
def test_gfr_bin_edges(value, expected):
    assert gfr_bin(value) == expected


@pytest.mark.parametrize("value, expected", [(0, "low"), (64.999, "low"), (65, "high"), (65.0, "high"), (90, "high")])
def test_donor_age_bin_edges(value, expected):
    assert donor_age_bin(value) == expected


@pytest.mark.parametrize("std, expected", [(0.0, "stable"), (50.0, "stable"), (50.01, "unstable"), (400, "unstable")])
def test_creatinine_bin_edges(std, expected):
    assert creatinine_bin(std) == expected


def test_bin_functions_reject_nan():
    with pytest.raises(ValueError):
        gfr_bin(float("nan"))


def test_gfr_bins_constant_in_order():
    assert GFR_BINS == ("extremely low", "very low", "low", "medium", "high")


@pytest.mark.parametrize(
    "exam, phrase", [("D15", "two weeks"), ("d30", "first month"), (" m3 ", "third month"), ("M12", "first year")]
)
def test_every_exam_maps_to_its_phrase_and_sentence(exam, phrase):
    # the reference code's exam phrases never matched D15/D30: every exam must reach its sentence
    assert exam_phrase(exam) == phrase
    record = ClinicalRecord(exam=exam)
    assert record.exam == exam.strip().upper()
    for text in prompt_variants(record):
        assert phrase in text
    assert phrase in build_prompt(record, attributes=("exam",))


def test_unknown_exam_rejected():
    with pytest.raises(ClinicalValueError, match="D15, D30, M3, M12"):
        ClinicalRecord(exam="M6")
    with pytest.raises(ClinicalValueError, match="exam"):
        ClinicalRecord(exam="")


# ------------------------------------------------------------------------- units, std, validation
def test_mg_dl_conversion_by_hand():
    rec = ClinicalRecord.from_values(exam="D30", creatinine=["1.2", 2.0], creatinine_unit="mg/dL")
    assert rec.creatinine[0] == pytest.approx(106.1, abs=0.05)  # 1.2 * 88.42 = 106.104
    assert rec.creatinine[1] == pytest.approx(176.84)
    std = ClinicalRecord.from_values(exam="M3", creatinine_std="0.6", creatinine_unit="mg/dl")
    assert std.creatinine_variability == pytest.approx(0.6 * 88.42)
    with pytest.raises(ClinicalValueError, match="creatinine_unit"):
        ClinicalRecord.from_values(exam="M3", creatinine=[100], creatinine_unit="mmol/L")


def test_creatinine_std_is_population_std():
    # numpy.std (ddof=0) as MEDIMP: [100, 120, 160] -> sqrt(((-80/3)^2 + (-20/3)^2 + (100/3)^2) / 3)
    rec = ClinicalRecord(exam="M12", creatinine=[100, 120, 160])
    assert rec.creatinine_variability == pytest.approx(math.sqrt(5600 / 9), rel=1e-12)  # 24.944
    assert rec.creatinine_variability == pytest.approx(np.std([100, 120, 160]))
    # [100, 200]: population std is exactly 50 -> stable (the sample std, 70.7, would be unstable)
    assert slot_values(ClinicalRecord(exam="D30", creatinine=[100, 200]))["creatinine"] == "stable"
    assert ClinicalRecord(exam="D30", creatinine=[150]).creatinine_variability is None


@pytest.mark.parametrize(
    "kwargs, field, pieces",
    [
        (dict(donor_age=130), "donor_age", ["donor age", "130", "0-100 years", "values a patient can have"]),
        (dict(donor_age=-1), "donor_age", ["donor age", "0-100 years"]),
        (dict(gfr="250"), "gfr", ["GFR", "250", "0-200 mL/min/1.73 m2"]),
        (dict(gfr="abc"), "gfr", ["GFR", "'abc'", "not a number", "0-200 mL/min/1.73 m2"]),
        (dict(gfr=float("inf")), "gfr", ["GFR", "not a number"]),
        (dict(creatinine=[100, 5]), "creatinine", ["creatinine", "5", "10-3000 umol/L"]),
        (dict(creatinine=[40], creatinine_unit="mg/dL"), "creatinine", ["40 mg/dL", "3536.8 umol/L", "10-3000"]),
        (dict(creatinine="80; x"), "creatinine", ["creatinine", "'x'", "not a number"]),
        (dict(creatinine_std=-3), "creatinine_std", ["creatinine variability", "0-3000 umol/L"]),
    ],
)
def test_validation_messages(kwargs, field, pieces):
    with pytest.raises(ClinicalValueError) as err:
        ClinicalRecord.from_values(exam="M3", **kwargs)
    assert isinstance(err.value, ValueError)
    assert err.value.field == field
    for piece in pieces:
        assert piece in str(err.value)


def test_loose_inputs_and_missing_values():
    rec = ClinicalRecord.from_values(exam="m3", donor_age=" 54 ", gfr="", creatinine="1,1; nan; 1.5",
                                     creatinine_unit="mg/dL")
    assert (rec.exam, rec.donor_age, rec.gfr) == ("M3", 54.0, None)
    assert rec.creatinine == pytest.approx((1.1 * 88.42, 1.5 * 88.42))
    assert ClinicalRecord.from_values(exam="M3", creatinine="80, 95 110").creatinine == (80.0, 95.0, 110.0)
    assert ClinicalRecord.from_values(exam="D15", gfr="37,5").gfr == 37.5  # decimal comma in a single value
    for missing in (None, float("nan"), "", "  ", "NA"):
        assert ClinicalRecord.from_values(exam="D15", gfr=missing, donor_age=missing).gfr is None
    with pytest.raises(ClinicalValueError, match="not both"):
        ClinicalRecord(exam="M3", creatinine=[100, 120], creatinine_std=10)


def test_from_csv_row_uses_exam_columns_and_creatinine_up_to_exam():
    row = {
        "patient_id": "P007", "donor_age": "67", "bsa": "1.8",
        "gfr_D15": "12", "gfr_D30": "28", "gfr_M3": "", "gfr_M12": "75",
        "creatinine_D15": "400", "creatinine_D30": "250", "creatinine_M3": "", "creatinine_M12": "120",
        "outcome_2y": "0", "outcome_3y": "1", "outcome_4y": "",
    }
    d15 = ClinicalRecord.from_csv_row(row, "D15")
    assert (d15.gfr, d15.creatinine, d15.creatinine_variability) == (12.0, (400.0,), None)
    assert d15.extra["patient_id"] == "P007" and "outcome_3y" in d15.extra and "gfr_M12" not in d15.extra
    m3 = ClinicalRecord.from_csv_row(row, "m3")
    assert m3.gfr is None and m3.creatinine == (400.0, 250.0)  # M3 creatinine missing, M12 not used
    assert slot_values(m3) == {"gfr": None, "exam": "third month", "creatinine": "unstable", "donor_age": "high"}
    m12 = ClinicalRecord.from_csv_row(row, "M12")
    assert m12.creatinine == (400.0, 250.0, 120.0) and slot_values(m12)["gfr"] == "high"


def test_from_csv_row_accepts_pandas_series():
    pd = pytest.importorskip("pandas")
    row = pd.Series({"patient_id": "P1", "donor_age": 40.0, "gfr_D30": 50.0, "creatinine_D15": 90.0,
                     "creatinine_D30": np.nan})
    rec = ClinicalRecord.from_csv_row(row, "D30")
    assert (rec.donor_age, rec.gfr, rec.creatinine) == (40.0, 50.0, (90.0,))


# --------------------------------------------------------------------------------------- prompts
def test_missing_values_drop_their_sentence():
    full = build_prompt(ClinicalRecord(**FULL))
    assert full == (
        "The estimated glomerular filtration rate is low. This MRI was acquired in the third month after "
        "kidney transplantation. The serum creatinine level is unstable over time. The donor age is low."
    )
    no_gfr = build_prompt(ClinicalRecord(**{**FULL, "gfr": None}))
    assert no_gfr == full.split(" ", 7)[-1] and "filtration" not in no_gfr
    only_exam = ClinicalRecord.from_values(exam="D15", donor_age="", gfr=None, creatinine=[float("nan")])
    assert build_prompt(only_exam) == "This MRI was acquired in the two weeks after kidney transplantation."
    assert build_prompt(only_exam, attributes=("gfr",)) == ""


def test_no_raw_numbers_in_prompts():
    rec = ClinicalRecord(**FULL)
    for text in prompt_variants(rec):
        assert not re.search(r"\d", text.replace("DCE-MRI", ""))


def test_templates_have_ten_paraphrases_with_one_slot():
    assert set(TEMPLATES) == set(ATTRIBUTES)
    for attr, templates in TEMPLATES.items():
        assert len(templates) == N_VARIANTS >= 10
        assert len(set(templates)) == len(templates)
        for t in templates:
            assert re.findall(r"\{(\w+)\}", t) == [P.SLOTS[attr]] and t.endswith(".")


def test_template_version_pinned_to_fingerprint():
    # editing templates or bins without bumping TEMPLATE_VERSION (see module docstring) fails here
    assert (P.TEMPLATE_VERSION, P.template_fingerprint()) == (
        "1.0", "79071b3d86b1a58bc231ca92f2c13e079dd75ae59f46a068d0d1469af07cb58d"
    )


@pytest.mark.parametrize("attributes", [ATTRIBUTES, ("gfr",), ("exam",), ("creatinine",), ("donor_age",)])
def test_variants_are_all_distinct(attributes):
    variants = prompt_variants(ClinicalRecord(**FULL), attributes=attributes)
    assert len(variants) == N_VARIANTS == len(set(variants))
    assert variants[3] == build_prompt(ClinicalRecord(**FULL), variant=3, attributes=attributes)
    # variant k = k-th paraphrase of each sentence
    assert variants[3].startswith(TEMPLATES[attributes[0]][3].split("{")[0])


def test_variant_argument_checks():
    rec = ClinicalRecord(**FULL)
    for bad in (-1, N_VARIANTS, 1.5):
        with pytest.raises(ValueError, match="variant"):
            build_prompt(rec, variant=bad)
    with pytest.raises(ValueError, match="not both"):
        build_prompt(rec, variant=1, seed=1)


def test_choose_variant_deterministic_across_processes():
    rec = ClinicalRecord(**FULL)
    picks = [choose_variant(rec, s) for s in range(40)]
    assert all(0 <= k < N_VARIANTS for k in picks) and len(set(picks)) > 3
    assert picks == [choose_variant(ClinicalRecord(**FULL), s) for s in range(40)]
    assert build_prompt(rec, seed=7) == build_prompt(rec, variant=picks[7])
    code = (
        "from napari_medimp.core.clinical import ClinicalRecord; from napari_medimp.core.prompts import choose_variant;"
        f"print([choose_variant(ClinicalRecord(**{FULL!r}), s) for s in range(40)])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}, timeout=300)
    assert out.stdout.strip() == str(picks)


def test_ablation_attribute_selection():
    rec = ClinicalRecord(**FULL)
    counts = []
    for step in P.ABLATION_STEPS:
        text = build_prompt(rec, variant=0, attributes=step)
        counts.append(text.count("."))
        assert ("glomerular" in text, "third month" in text, "creatinine" in text, "donor" in text) == tuple(
            a in step for a in ATTRIBUTES
        )
    assert counts == [1, 2, 3, 4]
    # fixed sentence order whatever the order asked
    assert build_prompt(rec, attributes=("donor_age", "gfr")) == build_prompt(rec, attributes=("gfr", "donor_age"))
    with pytest.raises(ValueError, match="unknown prompt attribute"):
        build_prompt(rec, attributes=("gfr", "bmi"))
    with pytest.raises(ValueError, match="unknown prompt attribute"):
        prompt_variants(rec, attributes=("egfr",))


def test_bin_prompts_one_per_gfr_bin_in_order():
    for k in (0, 4):
        texts = bin_prompts("gfr", variant=k)
        assert texts == [TEMPLATES["gfr"][k].format(gfr_bin=b) for b in GFR_BINS]
    # zero-shot sentences are exactly what a record in that bin produces
    for value, text in zip((5, 20, 40, 50, 90), bin_prompts("gfr", variant=2), strict=True):
        assert build_prompt(ClinicalRecord(exam="D15", gfr=value), variant=2, attributes=("gfr",)) == text
    assert len(bin_prompts("donor_age")) == 2 and len(bin_prompts("exam")) == len(EXAMS)
    with pytest.raises(ValueError):
        bin_prompts("weight")


# --------------------------------------------------------------------------- paraphrase generator
def test_paraphrase_filter():
    t = "The estimated glomerular filtration rate is {gfr_bin}."
    assert is_valid_paraphrase("Renal filtration of the graft is {gfr_bin}.", t)
    assert is_valid_paraphrase("{gfr_bin} is the level of renal filtration.", t)
    for bad in (
        "Renal filtration of the graft is low.",  # slot lost
        "GFR is {gfr_bin} and {gfr_bin}.",  # slot twice
        "GFR is {gfr_bin} at {exam_phrase}.",  # foreign slot
        "GFR is {gfr_bin} {.",  # stray brace
        "GFR is {gfr_bin}",  # not a sentence
        "{gfr_bin}.",  # too short
        "Line one is {gfr_bin}.\nLine two.",
        " ".join(["word"] * 50) + " {gfr_bin}.",  # too long
    ):
        assert not is_valid_paraphrase(bad, t), bad
    kept = filter_paraphrases(
        ["Renal filtration is {gfr_bin}.", "Renal filtration is low.", "renal filtration  is {gfr_bin}.", t], t
    )
    assert kept == ["Renal filtration is {gfr_bin}."]  # invalid, duplicate and the template itself dropped


def _tiny_lm(path, probs):
    """Save a randomly initialised 1-layer GPT-2 whose next-token distribution is fixed to ``probs``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["[UNK]", "[EOS]", *probs]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]").save_pretrained(path)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=256, vocab_size=len(words),
                     bos_token_id=1, eos_token_id=1)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():  # ln_f -> constant e0, tied wte[:, 0] = log p: logits independent of the input
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        logp = torch.log(torch.tensor([1e-6, 1e-6, *probs.values()]))
        model.transformer.wte.weight[:, 0] = logp
    model.save_pretrained(path)
    return path


def test_generate_paraphrases_with_tiny_local_model(tmp_path):
    probs = {"renal": 0.12, "function": 0.12, "is": 0.12, "the": 0.1, "gfr": 0.1,
             "{gfr_bin}": 0.2, ".": 0.18, "{exam_phrase}": 0.04, "}": 0.02}
    path = _tiny_lm(tmp_path / "lm", probs)
    template = "The estimated glomerular filtration rate is {gfr_bin}."
    kept = generate_paraphrases(template, path, n=5, seed=1, max_new_tokens=16, batch_size=32, max_rounds=2)
    assert 1 <= len(kept) <= 5
    for text in kept:
        assert text.count("{gfr_bin}") == 1 and "{exam_phrase}" not in text and text.endswith(".")
        assert is_valid_paraphrase(text, template)
    assert kept == generate_paraphrases(template, path, n=5, seed=1, max_new_tokens=16, batch_size=32,
                                        max_rounds=2)
    # no generation can hold this slot (not in the vocabulary): everything is dropped, nothing raised
    assert generate_paraphrases("The donor age is {donor_age_bin}.", path, n=3, max_new_tokens=8,
                                batch_size=8, max_rounds=1) == []
    # a failing generation (invalid sampling parameter) returns an empty list instead of raising
    assert generate_paraphrases(template, path, n=3, temperature=-1.0, max_rounds=1) == []


def test_check_form_reports_every_bad_field_at_once():
    from napari_medimp.core.clinical import check_form

    record, errors = check_form({"exam": "D30", "gfr": "abc", "donor_age": "300", "creatinine": "120; 135"})
    assert record is None and set(errors) == {"gfr", "donor_age"}
    assert "not a number" in errors["gfr"] and "0-100 years" in errors["donor_age"]
    record, errors = check_form({"exam": "D30", "gfr": "48", "creatinine": "120; 135", "creatinine_std": "5"})
    assert record is None and errors == {"creatinine_std": "give either the creatinine values or their variability (std), not both"}
    record, errors = check_form({"exam": "m3", "gfr": "48,5", "creatinine": "1,2; 1,5", "creatinine_unit": "mg/dL"})
    assert errors == {} and record.exam == "M3" and record.gfr == 48.5
    assert record.creatinine == pytest.approx((1.2 * 88.42, 1.5 * 88.42))
    assert check_form({"exam": "X1"})[1].keys() == {"exam"}
    with pytest.raises(ValueError, match="unknown clinical field"):
        check_form({"exam": "D30", "gfr_typo": "4"})


@pytest.mark.parametrize("text", ["4_5", "\u0664\u0665", "45\n50", "inf", "0x2d", "45 50", "1,2,3", "4.5.1", "nan5"])
def test_clinical_numbers_are_read_strictly(text):
    from napari_medimp.core.clinical import ClinicalValueError

    with pytest.raises(ClinicalValueError, match="is not a number"):
        ClinicalRecord.from_values(exam="D30", gfr=text)


@pytest.mark.parametrize(("text", "value"), [("45", 45.0), (" 45.5 ", 45.5), ("45,5", 45.5), ("+4.5e1", 45.0),
                                             (".5e2", 50.0)])
def test_plain_clinical_numbers_still_read(text, value):
    assert ClinicalRecord.from_values(exam="D30", gfr=text).gfr == value
