"""The stock eager path, for `mar bench` only: TorchServe's BaseHandler loads `--model-file` (one
class, built with no arguments, random init) and `--serialized-file` (torch.load + load_state_dict).
Only request decoding is added, and the same report line our handler logs when ready
(worker_report.py is packed beside this file)."""

import json
import os
import resource

import psutil
import torch
from ts.torch_handler.base_handler import BaseHandler
from worker_report import WorkerReport


class StockHandler(BaseHandler):
    def initialize(self, context):
        before = psutil.Process().memory_info().rss
        super().initialize(context)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(WorkerReport(event="ready", model=context.model_name, version="1.0", device="cpu",
                           resident_growth_bytes=max(peak - before, 0),
                           weights_bytes=os.path.getsize(self.model_pt_path)).log_line(),
              flush=True)

    def preprocess(self, data):
        rows = []
        for request in data:
            body = request.get("body") or request.get("data")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            rows.append(torch.tensor(body["inputs"], dtype=torch.float32))
        return torch.stack(rows)

    def postprocess(self, data):
        return [{"outputs": row} for row in data.tolist()]
