"""Inference benchmarks, one table, every comparison measured in the same run.

    python benchmarks/bench_inference.py [--repeat 3] [--threads N] [--skip-paper]

1. MEDIMP's image encoder (3D CLIP ResNet-50, input (z, y, x) 192x144x96, stem stride (2, 2, 1)) forward
   on this CPU: plain eager fp32 vs the Predictor's path (inference mode + its CPU memory format), against
   the bound set by the machine's measured fp32 matmul peak (model FLOPs / peak FLOP/s). Its FLOPs and
   parameters are printed beside the paper's figures (403.1 GFLOP, 61.2 M).
2. Compact model file -> embedding + prognosis for one exam (load excluded, preprocessing included).
3. Grad-CAM, Grad-CAM++ and occlusion time relative to one forward of the compact model.
4. Cache hit time for an exam already embedded.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak_flops(n: int = 2048, repeat: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = timed(lambda: a @ b, repeat)
    return 2 * n**3 / seconds


def bench_paper_encoder(repeat: int) -> list[tuple[str, str]]:
    from napari_medimp.core.inference import prepare_for_device
    from napari_medimp.core.models import PAPER_INPUT_SIZE, clip_resnet50_3d, count_flops

    encoder = clip_resnet50_3d(in_channels=1, input_size=PAPER_INPUT_SIZE).eval()
    x = torch.randn(1, 1, *PAPER_INPUT_SIZE)
    flops = count_flops(encoder, tuple(x.shape))
    params = sum(p.numel() for p in encoder.parameters())
    peak = matmul_peak_flops()

    def eager():
        with torch.no_grad():
            encoder(x)

    import copy

    fast_encoder, fast_input = prepare_for_device(copy.deepcopy(encoder), torch.device("cpu")), None

    def ours():
        nonlocal fast_input
        with torch.inference_mode():
            fast_input = x.to(memory_format=torch.channels_last_3d)
            fast_encoder(fast_input)

    t_eager = timed(eager, repeat)
    t_ours = timed(ours, repeat)
    bound = flops / peak
    return [
        ("paper encoder: model FLOPs per exam (paper: 403.1)", f"{flops / 1e9:.1f} GFLOP"),
        ("paper encoder: parameters (paper: 61.2 M)", f"{params / 1e6:.2f} M, feature grid {encoder.grid}"),
        ("machine fp32 matmul peak (2048^3 sgemm)", f"{peak / 1e9:.1f} GFLOP/s"),
        ("paper encoder: FLOP bound (FLOPs / peak)", f"{bound:.2f} s"),
        ("paper encoder: plain eager fp32 forward", f"{t_eager:.2f} s ({t_eager / bound:.2f}x bound)"),
        ("paper encoder: our inference path", f"{t_ours:.2f} s ({t_ours / bound:.2f}x bound, "
                                              f"{t_eager / t_ours:.2f}x faster than eager)"),
    ]


def bench_compact(repeat: int) -> list[tuple[str, str]]:
    from napari_medimp.core.checkpoint import PrognosisHead, save_model
    from napari_medimp.core.inference import EmbeddingCache, Predictor
    from napari_medimp.core.models import ModelConfig, build_model
    from napari_medimp.core.preprocess import PreprocessConfig
    from napari_medimp.core.prognosis import FEATURES_ID, HORIZONS, head_key
    from napari_medimp.core.prompts import EXAMS, TEMPLATE_VERSION
    from napari_medimp.core.saliency import PrognosisTarget, compute_saliency, model_grid_map
    from napari_medimp.core.synth import simulate_exam

    preprocessing = PreprocessConfig()
    config = ModelConfig(image_encoder="monai_resnet10", input_size=preprocessing.input_size, embed_dim=128)
    model = build_model(config).eval()
    dim = config.embed_dim
    heads = {head_key("image", v, h): PrognosisHead(h, np.zeros(dim), np.ones(dim), np.full(dim, 0.01), 0.0,
                                                    features=FEATURES_ID, kind="image", visit=v)
             for h in HORIZONS for v in EXAMS}
    volume = simulate_exam(seed=1, exam="D30").volume
    with tempfile.TemporaryDirectory() as folder:
        path = save_model(Path(folder) / "compact", model, preprocessing=preprocessing.to_dict(),
                          prompt_template_version=TEMPLATE_VERSION, prognosis=heads)
        t0 = time.perf_counter()
        predictor = Predictor.from_file(path, device="cpu", cache=EmbeddingCache(max_items=0))
        t_load = time.perf_counter() - t0
        size_mb = path.stat().st_size / 2**20

        def embed_and_prognosis():
            vector = predictor.embed_image(volume).vector
            predictor.prognosis({"D30": vector})

        t_end_to_end = timed(embed_and_prognosis, repeat)
        prepared = predictor.prepare(volume, predictor.roi_for(volume))
        batch = prepared.tensor[None]

        def forward():
            with torch.inference_mode():
                predictor.model.encode_image(batch)

        t_forward = timed(forward, repeat)
        roi = predictor.roi_for(volume)
        rows = [
            ("compact model (MONAI ResNet-10) file size", f"{size_mb:.1f} MB"),
            ("compact model: load (card, sha256, text model)", f"{t_load:.2f} s"),
            ("compact model: exam -> embedding + prognosis", f"{t_end_to_end:.3f} s"),
            ("compact model: one image forward", f"{t_forward:.3f} s"),
        ]
        target = PrognosisTarget(predictor.model, predictor.prognosis_head("image", "D30", "2y"), "D30")
        layer = f"model.{predictor.model.gradcam_layer}"
        for method in ("gradcam", "gradcam++", "occlusion"):
            t_map = timed(lambda m=method: model_grid_map(target, batch, m, layer), 1 if method == "occlusion" else repeat)
            t_all = timed(lambda m=method: compute_saliency(predictor, volume, roi, method=m, target="2y"), 1)
            rows.append((f"saliency {method}: map on the model grid", f"{t_map:.2f} s ({t_map / t_forward:.1f}x forward)"))
            rows.append((f"saliency {method}: exam -> map in exam geometry", f"{t_all:.2f} s"))
        cached = Predictor(predictor.loaded, device="cpu")
        cached.embed_image(volume, roi)
        t_hit = timed(lambda: cached.embed_image(volume, roi), repeat)
        rows.append(("cache hit (same exam, same ROI)", f"{t_hit * 1e3:.1f} ms"))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-paper", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [("torch threads", str(torch.get_num_threads()))]
    if not args.skip_paper:
        rows += bench_paper_encoder(args.repeat)
    rows += bench_compact(args.repeat)
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'measure'.ljust(width)} | value |\n|{'-' * (width + 2)}|---|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
