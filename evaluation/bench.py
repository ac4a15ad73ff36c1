"""``python -m evaluation bench``: training throughput of a bundle's own trainer against a minimal
hand-written PyTorch loop on the same network, data loader, optimizer and batch size (one run,
alternating rounds), inference latency per patient, and peak memory.

Runs in-process so that both loops share every object; one bundle per process.
"""

from __future__ import annotations

import logging
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from .methods import BUNDLES
from .runner import config_files


def _parser(bundle: str, names: list[str], profile: str, **values) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(config_files(bundle, tuple(names), profile))
    parser.update({"bundle_root": str(BUNDLES / bundle), **values})
    parser.get_parsed_content("initialize")
    return parser


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def manual_epochs(parser: ConfigParser, epochs: int) -> float:
    """The minimal loop: prepare batch, forward, loss, backward, step; seconds for ``epochs``."""
    get = parser.get_parsed_content
    network, optimizer, loss_fn, trainer = get("network"), get("optimizer"), get("loss"), get("train#trainer")
    loader, prepare, device = trainer.data_loader, trainer.prepare_batch, get("device")
    scaler = torch.amp.GradScaler("cuda") if trainer.amp else None
    network.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            image, label, args, kwargs = prepare(batch, device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=trainer.amp):
                loss = loss_fn(network(image, *args, **kwargs), label)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
    _sync(device)
    return time.perf_counter() - start


def trainer_epochs(parser: ConfigParser, epochs: int) -> float:
    trainer = parser.get_parsed_content("train#trainer")
    trainer.state.epoch, trainer.state.iteration, trainer.state.max_epochs = 0, 0, epochs  # a fresh run
    start = time.perf_counter()
    trainer.run()
    _sync(parser.get_parsed_content("device"))
    elapsed = time.perf_counter() - start
    if trainer.state.iteration != epochs * len(trainer.data_loader):
        raise RuntimeError(f"trainer ran {trainer.state.iteration} iterations, expected {epochs} epochs")
    return elapsed


def bench(data: Path, bundle: str, profile: str, epochs: int, rounds: int, teacher_features: Path | None,
          val_fold: int = 3, test_fold: int = 4) -> str:
    logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="pcr-bench-") as tmp:
        return _bench(Path(tmp), data, bundle, profile, epochs, rounds, teacher_features, val_fold, test_fold)


def _bench(work: Path, data: Path, bundle: str, profile: str, epochs: int, rounds: int,
           teacher_features: Path | None, val_fold: int, test_fold: int) -> str:
    values = dict(dataset_dir=str(data), output_dir=str(work), ckpt_dir=str(work), val_interval=10**9,
                  val_fold=val_fold, test_fold=test_fold)
    if teacher_features is not None:
        values["teacher_features"] = str(teacher_features)
    parser = _parser(bundle, ["train"], profile, **values)
    trainer = parser.get_parsed_content("train#trainer")
    patients = len(trainer.data_loader.dataset)
    trainer_epochs(parser, 1)  # warm-up (allocator, first-touch of the cache)
    manual_epochs(parser, 1)
    ratios, trainer_rates, manual_rates = [], [], []
    for _ in range(rounds):
        t_trainer = trainer_epochs(parser, epochs)
        t_manual = manual_epochs(parser, epochs)
        trainer_rates.append(epochs * patients / t_trainer)
        manual_rates.append(epochs * patients / t_manual)
        ratios.append(t_manual / t_trainer)
    torch.save({"model": parser.get_parsed_content("network").state_dict(),
                "settings": parser.get_parsed_content("model_settings").state_dict()}, work / "model.pt")

    infer = _parser(bundle, ["inference"], profile, dataset_dir=str(data), output_dir=str(work), ckpt_dir=str(work),
                    batch_size=1, infer_folds=[test_fold])
    evaluator = infer.get_parsed_content("evaluator")
    n_infer = len(evaluator.data_loader.dataset)
    start = time.perf_counter()
    evaluator.run()
    _sync(infer.get_parsed_content("device"))
    latency = (time.perf_counter() - start) / n_infer
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    device = parser.get_parsed_content("device")
    lines = [
        f"bundle {bundle}, profile {profile}, device {device}, widen_factor {parser['widen_factor']}, "
        f"batch {parser['batch_size']}, {patients} training patients, {rounds} rounds x {epochs} epochs, "
        f"torch threads {torch.get_num_threads()}",
        f"bundle trainer   : {statistics.median(trainer_rates):8.1f} patients/s (rounds: "
        + ", ".join(f"{r:.1f}" for r in trainer_rates) + ")",
        f"hand-written loop: {statistics.median(manual_rates):8.1f} patients/s (rounds: "
        + ", ".join(f"{r:.1f}" for r in manual_rates) + ")",
        f"throughput ratio trainer / loop: {statistics.median(ratios):.3f} (goal >= 0.9; rounds: "
        + ", ".join(f"{r:.3f}" for r in ratios) + ")",
        f"inference latency: {latency * 1000:.1f} ms per patient ({n_infer} patients, batch 1, loading and "
        f"preprocessing included; goal < 200 ms on CPU)",
        f"peak RSS: {peak_rss:.0f} MB",
    ]
    if device.type == "cuda":
        lines.append(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB (amp {trainer.amp})")
    return "\n".join(lines)
