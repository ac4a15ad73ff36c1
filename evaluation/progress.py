"""Progress of a run of many trainings: which model trains, its epoch, and the time left.

Each bundle run writes its own log; ``watch`` follows a training's log while the child runs and
reports each validated epoch. The estimate of the time left is the wall time so far scaled by the
share of planned epochs done (``plan`` counts the trainings ahead), so it includes evaluation and
start-up costs in proportion.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from pathlib import Path

log = logging.getLogger("evaluation")
EPOCH_LINE = re.compile(r"Epoch\[(\d+)\] Metrics -- (.*)$")


class Progress:
    """Shared by the concurrent trainings of one run (thread-safe)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started = time.perf_counter()
        self.planned_epochs = 0
        self.done_epochs = 0
        self.models = 0
        self.finished = 0

    def plan(self, models: int, epochs: int) -> None:
        """``models`` trainings of ``epochs`` epochs each are ahead."""
        with self.lock:
            self.models += models
            self.planned_epochs += models * epochs

    def epoch(self, name: str, epoch: int, epochs: int, metrics: str) -> None:
        with self.lock:
            self.done_epochs += 1
            if epoch % 5 and epoch not in (1, epochs):  # a line every 5 epochs is enough to follow
                return
            elapsed = time.perf_counter() - self.started
            share = self.done_epochs / max(self.planned_epochs, self.done_epochs)
            left = elapsed / share - elapsed
            model = f"model {self.finished + 1} of {self.models}" if self.models else "model"
        log.info("training %s (%s): epoch %d/%d, %s; about %s left", name, model, epoch, epochs, metrics.strip(),
                 minutes(left))

    def model_done(self) -> None:
        with self.lock:
            self.finished += 1


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def watch(process: subprocess.Popen, log_path: Path, on_match, pattern: re.Pattern = EPOCH_LINE,
          offset: int = 0, poll_s: float = 2.0) -> int:
    """Wait for ``process``, calling ``on_match(match)`` for each line of ``log_path`` from byte
    ``offset`` on (where the process began writing) that ``pattern`` matches (by default each
    validated epoch); returns the exit status."""
    with open(log_path, errors="replace") as stream:
        stream.seek(offset)
        pending = ""
        while True:
            try:  # returns as soon as the process ends
                status = process.wait(timeout=poll_s)
            except subprocess.TimeoutExpired:
                status = None
            pending += stream.read()
            *lines, pending = pending.split("\n")
            for line in lines:
                match = pattern.search(line)
                if match:
                    on_match(match)
            if status is not None:
                return status
