"""The load generators the benchmarks drive TorchServe with: ApacheBench as TorchServe's own
benchmark runs it, and wrk (for binary bodies, which ab misreads), each a dict of figures per run.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from handlers.errors import BenchError
from scripts.client import TorchServeClient
from scripts.config import ServerConfig

__all__ = ['wrk_run', 'ab_run', 'median_run']


_WRK_SCRIPT = """
wrk.method = "POST"
bodies = {}
for path in string.gmatch(os.getenv("MAR_BENCH_BODIES"), "[^\\n]+") do
  local file = io.open(path, "rb")
  bodies[#bodies + 1] = file:read("*all")
  file:close()
end
sent = 0
request = function()  -- the bodies in turn
  sent = sent + 1
  return wrk.format(nil, nil, nil, bodies[(sent % #bodies) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("MAR_WRK %d %d %d %.1f %.1f\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_run(config: ServerConfig, path: str, *, body: Path | list[Path], level: int,
            seconds: float, content_type: str = "application/json",
            headers: dict[str, str] | None = None) -> dict:
    """wrk (keep-alive, one thread per core) POSTing a body file (or several in turn: images of
    different sizes); the same figures as ab_run."""
    bodies = body if isinstance(body, list) else [body]
    body = bodies[0]
    script = body.with_suffix(".lua")
    script.write_text(_WRK_SCRIPT)
    extra = {"Content-Type": content_type, "Authorization": f"Bearer {config.key('inference')}",
             **(headers or {})}
    command = ["wrk", "-t", str(min(level, os.cpu_count() or 1)), "-c", str(level),
               "-d", f"{max(1, round(seconds))}s", "--timeout", "120s", "-s", str(script),
               *[arg for key, value in extra.items() for arg in ("-H", f"{key}: {value}")],
               config.inference_url + path]
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120,
                            env={**os.environ, "MAR_BENCH_BODIES": "\n".join(map(str, bodies))}
                            ).stdout
    _drain(config, path, body.read_bytes(), extra)
    found = re.search(r"MAR_WRK (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+)", output)
    if found is None:
        raise BenchError(f"bench: wrk produced no result:\n{output[-2000:]}")
    requests, micros, failed, p50_us, p99_us = found.groups()
    return {"requests_per_s": int(requests) / (int(micros) / 1e6), "p50_ms": float(p50_us) / 1000,
            "p99_ms": float(p99_us) / 1000, "completed": int(requests), "failed": int(failed)}


def _drain(config: ServerConfig, path: str, body: bytes, headers: dict[str, str]) -> None:
    """Wait until TorchServe has worked off what the load left queued: it keeps the jobs of
    connections wrk closed, and the next run would meet them (503s at job_queue_size). Its queue
    is first in, first out, so once one more request is answered, the backlog is gone."""
    extra = {k: v for k, v in headers.items() if k not in ("Content-Type", "Authorization")}
    TorchServeClient(config).post(path, body, content_type=headers["Content-Type"], headers=extra)


def ab_run(config: ServerConfig, name: str, body: Path, level: int, seconds: float) -> dict:
    """ApacheBench, as TorchServe's own benchmark drives it (-k keep-alive, POST JSON)."""
    # -l: response lengths vary (floats), which ab would otherwise count as failures
    command = ["ab", "-k", "-q", "-l", "-c", str(level), "-t", str(seconds), "-n", "10000000",
               "-p", str(body), "-T", "application/json",
               "-H", f"Authorization: Bearer {config.key('inference')}",
               f"{config.inference_url}/predictions/{name}"]
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120).stdout
    failed = int(_ab_field(output, r"Failed requests:\s+(\d+)") or 0)
    non_2xx = int(_ab_field(output, r"Non-2xx responses:\s+(\d+)") or 0)
    return {"requests_per_s": float(_ab_field(output, r"Requests per second:\s+([\d.]+)")),
            "p50_ms": float(_ab_field(output, r"\n\s+50%\s+(\d+)")),
            "p99_ms": float(_ab_field(output, r"\n\s+99%\s+(\d+)")),
            "completed": int(_ab_field(output, r"Complete requests:\s+(\d+)")),
            "failed": failed + non_2xx}


def _ab_field(output: str, pattern: str) -> str | None:
    match = re.search(pattern, output)
    if match is None and "Requests per second" not in output:
        raise BenchError(f"bench: ab produced no result:\n{output[-2000:]}")
    return match.group(1) if match else None


def median_run(rows: list[dict]) -> dict:
    middle = sorted(rows, key=lambda row: row["requests_per_s"])[len(rows) // 2]
    return {**middle, "runs_requests_per_s": [row["requests_per_s"] for row in rows],
            "failed": sum(row["failed"] for row in rows)}
