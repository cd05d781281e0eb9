"""Training under torchrun-style multi-process runs (2 CPU ranks, gloo): same losses as one process on the
same global batches, a stop on one rank stops all, exact resume; the torchrun command line itself."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from napari_medimp.core.preprocess import PreprocessConfig
from src_train.train import PRESETS, TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
# the options of the command-line runs below, on top of the cpu-small preset; no text dropout, so that
# the two runs draw no random numbers that depend on how the batch is split
TINY = {"preprocessing": PreprocessConfig(target_spacing=(6.0, 4.0, 4.0), input_size=(8, 16, 16)).to_dict(),
        "image_encoder_kwargs": {"width": 8}, "embed_dim": 16, "val_fraction": 0.34, "warmup_steps": 2,
        "text_dropout": 0.0, "epochs": 2, "batch_size": 4, "lr": 1e-4}


@pytest.fixture(scope="module")
def cohort(training_cohort):
    return training_cohort


def _config(cohort, out) -> TrainConfig:
    return TrainConfig.from_dict({**PRESETS["cpu-small"], **TINY, "cohort": str(cohort), "out": str(out)})


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _steps(events: list[dict]) -> list[float]:
    return [e["loss"] for e in events if e["event"] == "step"]


def _worker(rank: int, world: int, ports: list[int], config: dict, out_dir: str) -> None:
    # what torchrun gives each process; train() joins the group from these and leaves it at the end
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(ports[0]))
    torch.set_num_threads(1)
    events: list[dict] = []
    calls = {"n": 0}

    def stop_on_rank_1_only() -> bool:  # polled after every step and at each epoch's end: 4th = step 3
        calls["n"] += 1
        return rank == 1 and calls["n"] == 4

    first = train(TrainConfig.from_dict(config), progress=events.append, should_stop=stop_on_rank_1_only)
    os.environ["MASTER_PORT"] = str(ports[1])
    second = train(TrainConfig.from_dict(config), resume=True, progress=events.append)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"events": events, "results": [first, second]},
                                                            default=float))


def test_two_ranks_equal_one_process_with_a_stop_on_one_rank_and_resume(cohort, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers (summation order)
    try:
        reference: list[dict] = []
        train(_config(cohort, tmp_path / "single"), progress=reference.append)
    finally:
        torch.set_num_threads(threads)

    # forked ranks start in a second instead of importing MONAI and transformers again (~10 s each);
    # they set one thread before any torch work, as DataLoader workers do
    config = _config(cohort, tmp_path / "ddp")
    mp.start_processes(_worker, args=(WORLD, [_free_port(), _free_port()], config.to_dict(), str(tmp_path)),
                       nprocs=WORLD, join=True, start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]

    # the stop asked on rank 1 stopped both ranks after the same step, inside the second epoch
    for r in ranks:
        assert r["results"][0]["stopped"] and r["results"][0]["step"] == 3
        assert not r["results"][1].get("stopped")
    # only rank 0 reports and writes
    assert ranks[1]["events"] == []
    events = ranks[0]["events"]
    assert [e["event"] for e in events].count("resumed") == 1
    assert events[0]["world_size"] == WORLD
    # the 2-rank run (steps 1-3, stop, resume, step 4) has the losses of one process on the same batches
    ddp_losses, single_losses = _steps(events), _steps(reference)
    assert len(ddp_losses) == len(single_losses) == 4
    # measured: <= 1.2e-5 absolute, 4e-6 relative (summation order differs with the split)
    assert ddp_losses == pytest.approx(single_losses, rel=1e-5, abs=1e-5)
    ddp_val = [e["val_loss"] for e in events if e["event"] == "epoch"]
    single_val = [e["val_loss"] for e in reference if e["event"] == "epoch"]
    assert ddp_val == pytest.approx(single_val, rel=0, abs=1e-5)
    run = tmp_path / "ddp"
    card = json.loads((run / "last_model.json").read_text())
    assert card["training"]["world_size"] == WORLD
    assert len((run / "log.csv").read_text().splitlines()) == 1 + 2
    # the exported model is an ordinary one (plain batch norm) whose weights match the single process
    from napari_medimp.core.checkpoint import load_model

    a = load_model(run / "last_model").model.state_dict()
    b = load_model(tmp_path / "single" / "last_model").model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=5e-5, msg=key)  # measured: <= 1.6e-5


@pytest.mark.slow
def test_torchrun_command_sigterm_and_resume(cohort, tmp_path):
    """The documented command: torchrun --nproc-per-node 2 -m src_train train ...; SIGTERM to torchrun
    reaches every rank, which save a checkpoint and exit with 3; --resume finishes the run."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY, "epochs": 3}))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
               "-m", "src_train", "train", "--cohort", str(cohort), "--out", str(run), "--config", str(config),
               "--json-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    events = []
    for line in proc.stdout:
        if line.startswith("{"):
            events.append(json.loads(line))
            if events[-1]["event"] == "epoch":
                proc.send_signal(signal.SIGTERM)
                break
    proc.stdout.read()
    assert proc.wait(timeout=120) != 0  # torchrun reports the workers' exit code 3 as a failure
    state = json.loads((run / "last.json").read_text())
    assert state["world_size"] == WORLD and state["next_epoch"] >= 1
    done = subprocess.run([*command, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines[0]["event"] == "resumed" and lines[-1]["event"] == "done"
    card = json.loads((run / "last_model.json").read_text())["training"]
    assert card["world_size"] == WORLD and "torch" in card["command"] and "--resume" in card["resume_commands"][0]
    assert len((run / "log.csv").read_text().splitlines()) == 1 + 3
