"""Publish a trained, evaluated model file as the bundled demo model (``sample_data/medimp-demo``).

    python scripts/publish_demo_model.py runs/demo/best.safetensors [--out sample_data/medimp-demo]
                                         [--null-control runs/null/eval]

The weights, heads and card are written again under the new name (card ``name`` included), through the
same checked writer as every model file, so its hashes match. ``--null-control`` adds, under the card's
``metrics.null_setting_control``, the evaluation of the same recipe in the null setting (a model pretrained
and evaluated on cohorts whose images show other patients' grafts: ``evaluation.csv``, ``comparisons.csv``,
``zero_shot_gfr.json`` and ``content_retrieval.json`` of that folder), so the card shows what chance looks
like beside its own figures. Nothing else of the card changes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def null_control(folder: Path) -> dict:
    """The null-setting evaluation of ``folder`` as card metrics."""
    import pandas as pd

    def records(name: str) -> list:
        return json.loads(pd.read_csv(folder / name).to_json(orient="records"))

    return {"evaluation": records("evaluation.csv"), "comparisons": records("comparisons.csv"),
            "zero_shot_gfr": json.loads((folder / "zero_shot_gfr.json").read_text()),
            "content_retrieval": json.loads((folder / "content_retrieval.json").read_text()),
            "setting": "null: pretrained and evaluated on cohorts whose images show other patients' grafts "
                       "(medimp synth --images other), same recipe and seeds"}


def main(argv: list[str] | None = None) -> int:
    from napari_medimp.core.checkpoint import load_model, model_paths, save_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="the evaluated model file (evaluate --write-heads)")
    parser.add_argument("--out", type=Path, default=REPO / "sample_data" / "medimp-demo")
    parser.add_argument("--null-control", type=Path, help="evaluation folder of the null-setting control")
    args = parser.parse_args(argv)
    sources = {q.resolve() for q in model_paths(args.model)}
    if sources & {q.resolve() for q in model_paths(args.out)}:
        raise SystemExit(f"--out {args.out} is the model being published: choose another name (an output "
                         "never replaces its input)")
    loaded = load_model(args.model)
    card = loaded.card
    metrics = dict(card.get("metrics") or {})
    if args.null_control:
        metrics["null_setting_control"] = null_control(args.null_control)
    path = save_model(args.out, loaded.model, preprocessing=card["preprocessing"],
                      prompt_template_version=card["prompt_template_version"], training=card.get("training"),
                      metrics=metrics, prognosis=loaded.prognosis, licence=card.get("licence"),
                      name=args.out.name)
    print(f"{args.model} published as {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
