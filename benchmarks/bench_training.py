"""Training throughput: this project's loop vs a plain eager fp32 loop of the same model and data.

    python benchmarks/bench_training.py [--cohort sample_data/cohort] [--patients 12] [--steps 20]

Both loops see the same cached dataset (filled before timing), batch size, model and optimiser.
Ours is the training loop's own step (``src_train.train._Training.train_step``: precision, clipping,
temperature clamp, schedule) fed as ``train_one_epoch`` feeds it: batches (prompt draw, augmentation draw,
collation) built as ``batch_stream`` builds them (inline on the CPU with every exam cached, else in a
background thread one step ahead), augmentation applied to the whole batch.
``ours`` treats the frozen text layers as a fixed feature extractor, computed once per distinct prompt
(the default, ``cache_frozen_text``); the row without it runs them at every step, with dropout.
Reported: samples/s of each, their ratio, the share of time the model waits for (or, built inline,
builds) the next batch, and the share spent augmenting. ``--repeats`` alternates the loops and reports
the medians, each ratio taken between neighbouring runs, which steadies it on a shared machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

UNCACHED = "ours, frozen text run each step"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", type=Path, default=None)
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)

    from napari_medimp.core.models import build_model
    from napari_medimp.core.training_run import PRESETS, TrainConfig
    from src_train.batches import batch_images, batch_indices, batch_stream
    from src_train.data import ContrastiveDataset, cohort_items
    from src_train.distributed import setup_distributed
    from src_train.losses import ContrastiveLoss
    from src_train.schedule import parameter_groups
    from src_train.train import _Training, model_config

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
    plain_images = torch.stack([dataset.image(i) for i in range(len(dataset))])
    plain_texts = [dataset.prompts[i][0] for i in range(len(dataset))]
    loss_fn = ContrastiveLoss()

    def fresh():
        torch.manual_seed(0)
        model = build_model(model_config(config)).train()
        return model, torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr)

    def step(model, optimizer, images, texts):
        """The plain eager step: forward, loss, backward, optimiser; nothing else."""
        optimizer.zero_grad(set_to_none=True)
        img, txt, scale = model(images, texts)
        loss = loss_fn(img, txt, scale)
        loss.backward()
        optimizer.step()

    device = torch.device("cpu")
    chunks = [c for e in range(100) for c in batch_indices(len(dataset), args.batch_size, 0, e, True, True)]

    def ours_training(cache_frozen_text: bool = True) -> _Training:
        torch.manual_seed(0)
        variant = TrainConfig.from_dict({**config.to_dict(), "cache_frozen_text": cache_frozen_text})
        training = _Training(variant, setup_distributed("cpu"), None, None)
        training.start(resume=False, command="benchmark")
        training.train_set = dataset  # the same cached dataset as the plain loops
        return training

    def run(name: str) -> tuple[float, float, float]:
        ours = name.startswith("ours")
        wait = augment = 0.0
        if ours:
            training = ours_training(cache_frozen_text=name == "ours")
            training.train_step(plain_images[: args.batch_size], plain_texts[: args.batch_size])  # warm-up
        else:
            model, optimizer = fresh()
            step(model, optimizer, plain_images[: args.batch_size], plain_texts[: args.batch_size])
        t0 = time.perf_counter()
        if ours:  # batches as train_one_epoch gets them
            stream = batch_stream(dataset, enumerate(chunks[: args.steps]), device)
            while True:
                d0 = time.perf_counter()
                item = next(stream, None)
                wait += time.perf_counter() - d0
                if item is None:
                    break
                batch = item[1]
                a0 = time.perf_counter()
                images = batch_images(batch, device)
                augment += time.perf_counter() - a0
                training.train_step(images, batch["text"])
        else:
            drawn = name.endswith("drawn prompts")
            for chunk in chunks[: args.steps]:
                texts = [dataset.prompt(int(i)) if drawn else plain_texts[i] for i in chunk]
                step(model, optimizer, plain_images[chunk], texts)
        elapsed = time.perf_counter() - t0
        return args.steps * args.batch_size / elapsed, wait / elapsed, augment / elapsed

    # the loops alternate; each ratio compares neighbouring runs, which saw the same machine load
    names = ("plain eager fp32", "plain eager fp32, drawn prompts", "ours", UNCACHED)
    runs: dict = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            runs[name].append(run(name))

    def median(values):
        return float(sorted(values)[len(values) // 2]) if len(values) % 2 else float(
            sum(sorted(values)[len(values) // 2 - 1: len(values) // 2 + 1]) / 2)

    speed = {name: median([r[0] for r in runs[name]]) for name in names}
    ratio = median([o[0] / p[0] for o, p in zip(runs["ours"], runs["plain eager fp32"], strict=True)])
    ratio_drawn = median([o[0] / p[0] for o, p in zip(runs["ours"], runs["plain eager fp32, drawn prompts"],
                                                        strict=True)])
    ratio_uncached = median([o[0] / p[0] for o, p in zip(runs[UNCACHED], runs["plain eager fp32, drawn prompts"],
                                                           strict=True)])
    wait = median([r[1] for r in runs["ours"]])
    augment = median([r[2] for r in runs["ours"]])
    print(f"\n{args.repeats} alternating runs of {args.steps} steps each, medians\n")
    print("| training loop | samples/s | building or waiting for the next batch |\n|---|---|---|")
    print(f"| plain eager fp32 (pre-stacked tensors, first prompt variant, no augmentation) | "
          f"{speed['plain eager fp32']:.1f} | 0 % |")
    print(f"| plain eager fp32, prompt variants drawn as in training | "
          f"{speed['plain eager fp32, drawn prompts']:.1f} | 0 % |")
    print(f"| ours (the training loop's step: cached dataset, prompt draw, batch building, batch augmentation "
          f"({100 * augment:.0f} % of the time), clip, clamp, schedule) | {speed['ours']:.1f} | {100 * wait:.0f} % |")
    print(f"| ours, frozen text layers run at every step (`cache_frozen_text: false`) | {speed[UNCACHED]:.1f} | |")
    print(f"| ratio ours / plain | {ratio:.2f}x | |")
    print(f"| ratio ours / plain with drawn prompts | {ratio_drawn:.2f}x | |")
    print(f"| ratio ours without the frozen-text cache / plain with drawn prompts | {ratio_uncached:.2f}x | |")


if __name__ == "__main__":
    main()
