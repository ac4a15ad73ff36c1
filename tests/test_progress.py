"""Progress of long runs: epoch lines followed from a child's log, model count and time left."""

from __future__ import annotations

import logging
import subprocess
import sys

from evaluation.progress import Progress, watch

CHILD = ("import time\n"
         "for i in range(3):\n"
         "    print(f'INFO - Epoch[{i + 1}] Metrics -- val_auc: 0.{i} val_loss: 0.5', flush=True)\n"
         "    time.sleep(0.2)\n"
         "raise SystemExit(3)\n")


def test_watch_reports_each_epoch_line_as_the_log_grows_and_returns_the_exit_status(tmp_path):
    log = tmp_path / "train.log"
    with open(log, "a") as stream:
        stream.write("command line\n")
        stream.flush()
        process = subprocess.Popen([sys.executable, "-c", CHILD], stdout=stream)
    seen = []
    assert watch(process, log, lambda m: seen.append((int(m.group(1)), m.group(2))), poll_s=0.05) == 3
    assert seen == [(1, "val_auc: 0.0 val_loss: 0.5"), (2, "val_auc: 0.1 val_loss: 0.5"),
                    (3, "val_auc: 0.2 val_loss: 0.5")]


def test_progress_names_the_model_its_epoch_and_the_time_left(caplog):
    progress = Progress()
    progress.plan(models=2, epochs=10)
    with caplog.at_level(logging.INFO, logger="evaluation"):
        for epoch in range(1, 11):
            progress.epoch("pcr_teacher test4_val3", epoch, 10, "val_loss: 0.5")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # epochs 1, 5 and 10
    assert lines[1].startswith("training pcr_teacher test4_val3 (model 1 of 2): epoch 5/10, val_loss: 0.5; about ")
    assert lines[-1].endswith(" left")
    progress.model_done()
    assert progress.finished == 1 and progress.done_epochs == 10


def test_each_bundle_counts_its_own_profile_epochs(tmp_path, monkeypatch):
    """Stage 2's profile may train longer than stage 1's: its progress counts its own epochs, and a
    run's ``epochs`` replaces every bundle's."""
    import evaluation.runner as runner_module
    from evaluation.methods import DUALTASK, MRP, TEACHER

    epochs = {TEACHER: 30, DUALTASK: 60, MRP: 40}
    monkeypatch.setattr(runner_module, "merged_settings", lambda bundle, configs, profile: {"epochs": epochs[bundle]})
    runner = runner_module.Runner(tmp_path, tmp_path / "out", "cpu")
    assert {b: runner.bundle_epochs(b) for b in epochs} == epochs
    fixed = runner_module.Runner(tmp_path, tmp_path / "out", "cpu", epochs=2)
    assert {fixed.bundle_epochs(b) for b in epochs} == {2}
