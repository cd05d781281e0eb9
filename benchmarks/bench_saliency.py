"""How faithful each saliency method is, for every target, on synthetic exams the model never saw.

    python benchmarks/bench_saliency.py [--exams 5] [--first-seed 3000] [--methods gradcam occlusion]
                                        [--targets similarity 2y] [--json out.json] [--write-card]

Exams: patient 0 of seeds ``--first-seed`` onwards (the demo model was pretrained on seed 2023, its heads
fitted on 2024, the sample exam is 2025), visits D15, D30, M3, M12 in turn, with their tissue labels; the
prompt is the patient's clinical row at that visit; the kidney box is found automatically, as in use.
Per method and target, means over the exams of (see ``napari_medimp.core.faithfulness``):

* the share of the map's top 10 % voxels and of its energy on the graft and its artery (cortex, medulla,
  collecting system, artery), against their share of the box (chance); a map zero on the whole box
  counts as no share (column "empty");
* deletion and insertion areas on the model grid, by blocks of 2x4x4 model voxels (8x10x10 mm) ordered
  by the map's mean (removed blocks become 0, the pre-contrast level and what the model sees around the
  box; 16 steps) against the mean of 2 random block orders;
* the weight-randomisation check: Spearman rank correlation between the map of the model and the map of
  the same model with its image encoder and projection redrawn (passed below 0.5), on the box.

Best method: the one meeting most of four criteria over all its maps (top 10 % share on the graft and
artery above chance, i.e. above their share of the box; deletion beats random orders on most maps;
insertion beats random orders on most maps; the randomisation check passes on most maps), ties broken by
the share; the card records which criteria it misses.
Areas are given as medians over maps, with the number of maps on which the map beat the random orders:
a prognosis logit can leave the range between the full and the empty image on a partly removed image.
``--write-card`` stores the summary in the model card's ``saliency_faithfulness`` (only the JSON changes).
``--diagnose`` prints why maps sit off the kidney instead: how much of the model input is padding around
the kidney box, how much of the input gradient lies there, and Grad-CAM's share at each stage.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime

import numpy as np
import torch


def exams(n: int, first_seed: int):
    from napari_medimp.core.clinical import ClinicalRecord
    from napari_medimp.core.prompts import build_prompt
    from napari_medimp.core.synth import sample_patient, simulate_exam
    from napari_medimp.core.terms import EXAMS

    for i in range(n):
        seed, exam = first_seed + i, EXAMS[i % len(EXAMS)]
        made = simulate_exam(seed=seed, patient_index=0, exam=exam)
        record = ClinicalRecord.from_csv_row(sample_patient(seed, 0)["clinical"], exam)
        yield f"seed {seed} {exam}", exam, made.volume, made.labels, build_prompt(record)


def measure(args) -> tuple[list[dict], dict]:
    from napari_medimp.core.faithfulness import (
        REGIONS,
        deletion_insertion,
        randomisation_check,
        region_shares,
    )
    from napari_medimp.core.inference import Predictor
    from napari_medimp.core.saliency import PrognosisTarget, SimilarityTarget, model_grid_map, randomised_copy
    from napari_medimp.core.sample import default_model_path
    from napari_medimp.core.terms import ARTERY, COLLECTING_SYSTEM, CORTEX, MEDULLA

    predictor = Predictor.from_file(args.model or default_model_path(), device="cpu")
    model = predictor.model
    randomised = randomised_copy(model, parts=("image_encoder", "image_projection"), seed=args.seed)
    layer = f"model.{model.gradcam_layer}"
    per_map: list[dict] = []
    for name, exam, volume, labels, prompt in exams(args.exams, args.first_seed):
        roi = predictor.roi_for(volume)
        prepared = predictor.prepare(volume, roi)
        box_labels = labels[roi.slices]
        x = prepared.tensor[None]
        text = predictor.embed_texts([prompt])[0]
        print(f"{name}: box {roi.to_list()}", flush=True)
        for target in args.targets:
            def wrap(m, target=target, text=text, exam=exam):
                if target == "similarity":
                    return SimilarityTarget(m, text).eval()
                return PrognosisTarget(m, predictor.prognosis_head("image", exam, target), exam).eval()

            trained, shuffled = wrap(model), wrap(randomised)

            def score(images, wrapper=trained):
                with torch.no_grad():
                    return wrapper(torch.as_tensor(np.asarray(images), dtype=torch.float32))[:, 0].numpy()

            for method in args.methods:
                t0 = time.perf_counter()
                grid = model_grid_map(trained, x, method, layer)
                seconds = time.perf_counter() - t0
                on_box, _ = prepared.to_source(grid)
                random_box, _ = prepared.to_source(model_grid_map(shuffled, x, method, layer))
                row = {"exam": name, "target": target, "method": method, "seconds": seconds}
                try:
                    shares = region_shares(on_box, box_labels)
                    row["regions"] = shares["regions"]
                    row.update({f"{kind}": shares["groups"]["graft and artery"][kind] for kind in ("box", "energy", "top")})
                    row["graft_top"] = shares["groups"]["graft"]["top"]
                except ValueError as exc:  # a map zero on the whole box points at nothing: no share
                    row["note"] = str(exc)
                    graft = np.isin(box_labels, (CORTEX, MEDULLA, COLLECTING_SYSTEM, ARTERY))
                    row.update(box=float(graft.mean()), energy=0.0, top=0.0, graft_top=0.0,
                               regions={r: {"box": float("nan"), "energy": 0.0, "top": 0.0} for r in REGIONS})
                curves = deletion_insertion(score, x[0].numpy(), grid, steps=args.steps, n_random=args.random,
                                            block=args.block, seed=args.seed)
                row.update({k: curves[k] for k in ("deletion_auc", "insertion_auc", "random_deletion_auc",
                                                   "random_insertion_auc")})
                row.update(randomisation_check(on_box, random_box))
                per_map.append(row)
    setup = {"model": str(args.model or default_model_path()), "weights_sha256": predictor.loaded.weights_sha256,
             "exams": args.exams, "first_seed": args.first_seed, "steps": args.steps, "random_orders": args.random, "block": "x".join(map(str, args.block))}
    return per_map, setup


def diagnose(args) -> str:
    """Why maps sit off the kidney: per exam and target, the share of the model input that is padding around
    the kidney box (exactly 0 after normalisation), the share of the input gradient's magnitude there, the
    last stage's grid, and Grad-CAM's top 10 % share on the graft and artery at each stage."""
    from napari_medimp.core.faithfulness import region_shares
    from napari_medimp.core.inference import Predictor
    from napari_medimp.core.saliency import PrognosisTarget, SimilarityTarget, model_grid_map
    from napari_medimp.core.sample import default_model_path

    predictor = Predictor.from_file(args.model or default_model_path(), device="cpu")
    model = predictor.model
    stages = ("layer1", "layer2", "layer3", "layer4")
    lines = ["| exam | target | padding share of the input | input-gradient magnitude in the padding | "
             + " | ".join(f"Grad-CAM {s} top 10 % on graft+artery" for s in stages) + " |",
             "|---|---|---|---|" + "---|" * len(stages)]
    grids = {}
    for name, exam, volume, labels, prompt in exams(args.exams, args.first_seed):
        roi = predictor.roi_for(volume)
        prepared = predictor.prepare(volume, roi)
        x = prepared.tensor[None]
        padding = (x[0, 0] == 0).numpy()
        for target in args.targets:
            wrapper = (SimilarityTarget(model, predictor.embed_texts([prompt])[0]) if target == "similarity" else
                       PrognosisTarget(model, predictor.prognosis_head("image", exam, target), exam)).eval()
            inputs = x.clone().requires_grad_(True)
            with torch.enable_grad():
                (gradient,) = torch.autograd.grad(wrapper(inputs)[:, 0].sum(), inputs)
            magnitude = gradient.abs()[0, 0].numpy()
            shares = []
            for stage in stages:
                layer = f"model.image_encoder.{stage}"
                hooked = []
                handle = model.get_submodule(f"image_encoder.{stage}").register_forward_hook(
                    lambda _m, _i, out, hooked=hooked: hooked.append(tuple(out.shape[2:])))
                with torch.no_grad():
                    wrapper(x)
                handle.remove()
                grids[stage] = "x".join(map(str, hooked[0]))
                on_box, _ = prepared.to_source(model_grid_map(wrapper, x, "gradcam", layer))
                try:
                    shares.append(f"{region_shares(on_box, labels[roi.slices])['groups']['graft and artery']['top']:.0%}")
                except ValueError:
                    shares.append("empty")
            lines.append(f"| {name} | {target} | {padding.mean():.0%} | "
                         f"{magnitude[padding].sum() / magnitude.sum():.0%} | " + " | ".join(shares) + " |")
    lines.append("")
    lines.append("Feature grids (z x y x x) of the stages for a 32x64x64 input: "
                 + ", ".join(f"{s} {g}" for s, g in grids.items()))
    return "\n".join(lines)


def summarise(per_map: list[dict]) -> list[dict]:
    """One row per method and target: means of the shares, medians of the areas (a few maps with a score
    far outside the full-to-empty range would swing a mean), and on how many maps each verdict held."""
    rows = []
    for method in dict.fromkeys(r["method"] for r in per_map):
        for target in dict.fromkeys(r["target"] for r in per_map):
            maps = [r for r in per_map if r["method"] == method and r["target"] == target]
            if not maps:
                continue

            def mean(key, maps=maps):
                return float(np.mean([r[key] for r in maps]))

            def median(key, maps=maps):
                return float(np.median([r[key] for r in maps]))

            rows.append({
                "method": method, "target": target, "maps": len(maps), "empty_maps": sum("note" in r for r in maps),
                "top_graft_artery": mean("top"), "top_graft": mean("graft_top"),
                "energy_graft_artery": mean("energy"), "box_graft_artery": mean("box"),
                "deletion_auc": median("deletion_auc"), "random_deletion_auc": median("random_deletion_auc"),
                "deletion_beats_random": sum(r["deletion_auc"] < r["random_deletion_auc"] for r in maps),
                "insertion_auc": median("insertion_auc"), "random_insertion_auc": median("random_insertion_auc"),
                "insertion_beats_random": sum(r["insertion_auc"] > r["random_insertion_auc"] for r in maps),
                "rank_correlation": mean("rank_correlation"),
                # a map zero on the whole box shows nothing that randomisation could destroy: not passed
                "randomisation_passed": sum(bool(r["passed"]) and "note" not in r for r in maps),
                "seconds": mean("seconds"),
                "regions_top": {region: float(np.mean([r["regions"][region]["top"] for r in maps]))
                                for region in maps[0]["regions"]},
            })
    return rows


def per_method(rows: list[dict]) -> dict[str, dict]:
    """Over every target: mean shares and correlation, median areas, the verdicts' counts, and whether each
    holds on most maps."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        maps = sum(r["maps"] for r in mine)
        summary = {key: float(np.mean([r[key] for r in mine])) for key in (
            "top_graft_artery", "energy_graft_artery", "box_graft_artery", "rank_correlation")}
        summary |= {key: float(np.median([r[key] for r in mine])) for key in (
            "deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc")}
        summary["maps"] = maps
        for verdict in ("randomisation_passed", "deletion_beats_random", "insertion_beats_random"):
            summary[verdict] = sum(r[verdict] for r in mine)
        summary["randomisation_check"] = summary["randomisation_passed"] > maps / 2
        summary["beats_random"] = (summary["deletion_beats_random"] > maps / 2
                                   and summary["insertion_beats_random"] > maps / 2)
        summary["above_chance"] = summary["top_graft_artery"] > summary["box_graft_artery"]
        summary["criteria_met"] = criteria_met(summary)
        out[method] = summary
    return out


#: what a faithful map does, each judged over every map of a method (see the module docstring)
CRITERIA = {"above_chance": "more of its top 10 % on the graft and artery than their share of the box",
            "deletion_beats_random_on_most_maps": "deletion beats random orders on most maps",
            "insertion_beats_random_on_most_maps": "insertion beats random orders on most maps",
            "randomisation_check": "changes when the model's weights are randomised, on most maps"}


def criteria_met(summary: dict) -> list[str]:
    maps = summary["maps"]
    met = {"above_chance": summary["above_chance"],
           "deletion_beats_random_on_most_maps": summary["deletion_beats_random"] > maps / 2,
           "insertion_beats_random_on_most_maps": summary["insertion_beats_random"] > maps / 2,
           "randomisation_check": summary["randomisation_check"]}
    return [name for name in CRITERIA if met[name]]


def best_method(methods: dict[str, dict]) -> tuple[str, str]:
    """The rule the default method is chosen by: most criteria met, then the highest share."""
    best = max(methods, key=lambda m: (len(criteria_met(methods[m])), methods[m]["top_graft_artery"]))
    met = criteria_met(methods[best])
    missed = [CRITERIA[c] for c in CRITERIA if c not in met]
    return best, (f"meets {len(met)} of {len(CRITERIA)} criteria, more than any other method"
                  + (f"; misses: {'; '.join(missed)}" if missed else ""))


def table(rows: list[dict]) -> str:
    lines = ["| method | target | top 10 % on graft+artery | graft only | energy on graft+artery | box share "
             "| deletion AUC, median (random) | beats random | insertion AUC, median (random) | beats random "
             "| randomisation rho | passed | empty | s/map |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = r["maps"]
        lines.append(
            f"| {r['method']} | {r['target']} | {r['top_graft_artery']:.0%} | {r['top_graft']:.0%} | "
            f"{r['energy_graft_artery']:.0%} | {r['box_graft_artery']:.0%} | "
            f"{r['deletion_auc']:.2f} ({r['random_deletion_auc']:.2f}) | {r['deletion_beats_random']}/{n} | "
            f"{r['insertion_auc']:.2f} ({r['random_insertion_auc']:.2f}) | {r['insertion_beats_random']}/{n} | "
            f"{r['rank_correlation']:+.2f} | {r['randomisation_passed']}/{n} | {r['empty_maps']} | "
            f"{r['seconds']:.1f} |")
    return "\n".join(lines)


def method_table(methods: dict[str, dict]) -> str:
    lines = ["| method | top 10 % on graft+artery | box share | deletion beats random | insertion beats random "
             "| randomisation passed | rho |", "|---|---|---|---|---|---|---|"]
    for m, s in methods.items():
        n = s["maps"]
        lines.append(f"| {m} | {s['top_graft_artery']:.0%} | {s['box_graft_artery']:.0%} | "
                     f"{s['deletion_beats_random']}/{n} | {s['insertion_beats_random']}/{n} | "
                     f"{s['randomisation_passed']}/{n} | {s['rank_correlation']:+.2f} |")
    return "\n".join(lines)


def region_table(rows: list[dict]) -> str:
    regions = next((list(r["regions_top"]) for r in rows if r["regions_top"]), [])
    lines = ["| method | target | " + " | ".join(regions) + " |", "|---|---|" + "---|" * len(regions)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['target']} | "
                     + " | ".join(f"{r['regions_top'].get(g, float('nan')):.0%}" for g in regions) + " |")
    return "\n".join(lines)


def card_summary(rows: list[dict], methods: dict[str, dict], setup: dict) -> dict:
    best, why = best_method(methods)
    return {
        "measured": datetime.now(UTC).strftime("%Y-%m-%d"),
        "benchmark": "benchmarks/bench_saliency.py",
        "exams": f"{setup['exams']} synthetic exams with tissue labels, patient 0 of seeds {setup['first_seed']}-"
                 f"{setup['first_seed'] + setup['exams'] - 1} (unseen), visits D15, D30, M3, M12 in turn",
        "top_fraction": 0.10,
        "regions": "graft and artery: cortex, medulla, collecting system, artery",
        "deletion_insertion": f"model grid, blocks of {setup['block']} voxels set to 0, {setup['steps']} steps, "
                              f"against {setup['random_orders']} random orders; scaled so the image reads 1 and "
                              "the empty image 0",
        "randomisation": "Spearman rank correlation with the map of the model whose image encoder and "
                         "projection are redrawn; passed below 0.5 (a map zero on the box never passes)",
        "best_method": best,
        "best_method_rule": why,
        "target": "at least 60 % of the best method's top 10 % voxels on the graft and its artery, with the "
                  "randomisation check passed",
        "target_met": bool(methods[best]["top_graft_artery"] >= 0.6 and methods[best]["randomisation_check"]),
        "criteria": CRITERIA,
        "methods": {m: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}
                    for m, s in methods.items()},
        "by_target": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "regions_top"}
                      | {"regions_top": {g: round(v, 4) for g, v in r["regions_top"].items()}} for r in rows],
    }


def main(argv=None) -> None:
    from napari_medimp.core.terms import HORIZONS, SALIENCY_METHODS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model file (default: the demo model)")
    parser.add_argument("--exams", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=3000)
    parser.add_argument("--methods", nargs="+", default=list(SALIENCY_METHODS), choices=SALIENCY_METHODS)
    parser.add_argument("--targets", nargs="+", default=["similarity", *HORIZONS])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--block", type=int, nargs=3, default=[2, 4, 4],
                        help="deletion and insertion remove blocks of this many model voxels (z y x)")
    parser.add_argument("--random", type=int, default=2, help="random voxel orders for the deletion baseline")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random orders and weights")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write every map's figures and the summary to this file")
    parser.add_argument("--diagnose", action="store_true",
                        help="only the diagnosis: padding around the box, input gradient there, Grad-CAM per stage")
    parser.add_argument("--from-json", help="summarise the maps of an earlier run's --json instead of measuring")
    parser.add_argument("--write-card", action="store_true",
                        help="store the summary in the model card's saliency_faithfulness")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.diagnose:
        print("\n" + diagnose(args))
        return
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        per_map, setup = saved["maps"], saved["setup"]
    else:
        per_map, setup = measure(args)
    rows = summarise(per_map)
    methods = per_method(rows)
    best, why = best_method(methods)
    print("\n" + table(rows))
    print("\nShare of the top 10 % voxels per region (means over exams):\n\n" + region_table(rows))
    print("\nPer method, over every target and exam:\n\n" + method_table(methods))
    print(f"\nBest method: {best} ({why}).")
    summary = card_summary(rows, methods, setup)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": setup, "maps": per_map, "summary": summary}, f, indent=1, default=float)
    if args.write_card:
        from napari_medimp.core.checkpoint import model_paths

        card_path = model_paths(setup["model"])[1]
        card = json.loads(card_path.read_text())
        card["saliency_faithfulness"] = summary
        card_path.write_text(json.dumps(card, indent=1) + "\n")
        print(f"saliency_faithfulness written to {card_path}")


if __name__ == "__main__":
    main()
