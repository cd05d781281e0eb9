"""Training throughput: this project's loop vs a plain eager fp32 loop of the same model and data.

    python benchmarks/bench_training.py [--cohort sample_data/cohort] [--patients 12] [--steps 20]

Both loops see the same cached dataset (MONAI cache filled before timing), batch size, model and
optimiser. Reported: samples/s of each, their ratio, and the share of time spent producing batches
(augmentation + prompt draw + collation) that the model waits for inside our loop.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", type=Path, default=None)
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    from napari_medimp.core.models import build_model
    from src_train.data import ContrastiveDataset, cohort_items
    from src_train.losses import ContrastiveLoss
    from src_train.train import (
        PRESETS,
        TrainConfig,
        batch_indices,
        collate,
        model_config,
        parameter_groups,
        prefetch,
    )

    workdir = Path(tempfile.mkdtemp())
    cohort = args.cohort
    if cohort is None:
        from napari_medimp.core import synth

        cohort = workdir / "cohort"
        synth.generate_cohort(cohort, n_patients=args.patients, seed=5)
    config = TrainConfig.from_dict({**PRESETS["cpu-small"], "cohort": str(cohort), "out": str(workdir / "run"),
                                    "batch_size": args.batch_size})
    from napari_medimp.core.preprocess import PreprocessConfig

    items, _ = cohort_items(cohort)
    dataset = ContrastiveDataset(items, PreprocessConfig.from_dict(config.preprocessing), seed=0)
    plain_images = torch.stack([torch.as_tensor(dataset._cache[i]["image"]) for i in range(len(dataset))])
    plain_texts = [dataset.prompts[i][0] for i in range(len(dataset))]
    loss_fn = ContrastiveLoss()

    def fresh():
        torch.manual_seed(0)
        model = build_model(model_config(config)).train()
        return model, torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr)

    def step(model, optimizer, images, texts, ours: bool):
        optimizer.zero_grad(set_to_none=True)
        img, txt, scale = model(images, texts)
        loss = loss_fn(img, txt, scale)
        loss.backward()
        if ours:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if ours:
            model.clamp_logit_scale_()

    results = {}
    for name in ("plain eager fp32", "ours"):
        model, optimizer = fresh()
        ours = name == "ours"
        chunks = [c for e in range(100) for c in batch_indices(len(dataset), args.batch_size, 0, e, True, True)]
        data_time = 0.0
        step(model, optimizer, plain_images[: args.batch_size], plain_texts[: args.batch_size], ours)  # warm-up
        t0 = time.perf_counter()
        if ours:  # as the training loop does: batches built in a background thread, one step ahead
            wait = 0.0
            stream = prefetch(collate([dataset[int(i)] for i in chunk]) for chunk in chunks[: args.steps])
            while True:
                d0 = time.perf_counter()
                batch = next(stream, None)
                wait += time.perf_counter() - d0
                if batch is None:
                    break
                step(model, optimizer, batch["image"], batch["text"], ours)
            data_time = wait
        else:
            for chunk in chunks[: args.steps]:
                step(model, optimizer, plain_images[chunk], [plain_texts[i] for i in chunk], ours)
        elapsed = time.perf_counter() - t0
        results[name] = (args.steps * args.batch_size / elapsed, data_time / elapsed)

    plain, ours = results["plain eager fp32"][0], results["ours"][0]
    print("\n| training loop | samples/s | waiting for data |\n|---|---|---|")
    print(f"| plain eager fp32 (pre-stacked tensors, no augmentation) | {plain:.1f} | 0 % |")
    print(f"| ours (cached dataset, augmentation, prompt draw, prefetch, clip, clamp) | {ours:.1f} | "
          f"{100 * results['ours'][1]:.0f} % |")
    print(f"| ratio ours / plain | {ours / plain:.2f}x | |")


if __name__ == "__main__":
    main()
