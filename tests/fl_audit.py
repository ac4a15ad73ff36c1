"""An NVFlare filter that records what a client sends (tests import it in the simulator's processes)."""

from __future__ import annotations

import json

from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLContextKey


class SentRecorder(Filter):
    """Appends one JSON line per outgoing result: task, DXO kind, data keys and value types, meta keys."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def process(self, shareable, fl_ctx):
        dxo = from_shareable(shareable)
        record = {"site": fl_ctx.get_identity_name(), "task": fl_ctx.get_prop(FLContextKey.TASK_NAME),
                  "kind": dxo.data_kind, "keys": sorted(dxo.data), "types": sorted({type(v).__name__ for v in dxo.data.values()}),
                  "meta": {k: repr(v) for k, v in dxo.meta.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        return shareable
