"""The server under load: 50 concurrent uploads to ``unihema serve`` on loopback.

Saves the ``tiny`` preset with random weights and small input sizes (detection 256 px, at most 384 px;
segmentation 256 px; single-cell and text 128 px) to a temporary folder, starts ``unihema serve`` on it
in its own process (2 workers, a queue of 64, so that all 50 requests are admitted), sends one warm-up
request, then ``--requests`` uploads all at once (``--concurrency`` connections) of three 256x256
synthetic fields with the default tasks (detection, FoV morphology, segmentation). Every request has a
``--request-timeout`` and the whole run a ``--deadline``: requests still open then count as errors.
Records the errors (anything but a 200), the client-side latency percentiles, the throughput and the
server process's peak resident memory (``VmHWM``; it includes loading the model).

Run alone on the machine (client and server share its cores):
``python benchmarks/bench_serve.py --write-doc docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import torch
from benchmark_doc import write_section
from PIL import Image

from unihema.data.synthetic import SyntheticConfig, SyntheticCorpus
from unihema.data.transforms import TransformConfig
from unihema.inference.preprocessor import PreprocessorConfig
from unihema.model.unihema import UniHema

TITLE = "## Server under load (`unihema serve`)"
INPUTS = PreprocessorConfig(
    transforms=TransformConfig(
        det_train_sizes=(256,), det_eval_size=256, det_max_size=384, seg_size=256, cls_size=128, text_size=128
    ),
    pad_to_multiple=32,
)
PREDICTION = (
    "Prediction written before the first run: the model runs one image at a time, so the 50 requests "
    "queue behind one another and the latencies spread evenly from one service time to fifty. At about "
    "0.25 s per request (the shared pass of the tiny preset at 256 px plus the overlay and the exports), "
    "about 4 requests/s: p50 near 6 s, p90 near 11 s, p99 near 12 s, no errors; the server's peak "
    "resident memory near 1.2 GiB (torch and the model; 50 small uploads add little)."
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def _fields(count: int) -> list[bytes]:
    corpus = SyntheticCorpus(SyntheticConfig(image_size=256, n_images=count, seed=11), cache=False)
    encoded = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.fromarray(corpus.field(index).image).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def _load(
    base: str, images: list[bytes], requests: int, concurrency: int, timeout: float, deadline: float
) -> dict:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:

        async def one(index: int) -> tuple[float, int | str, dict]:
            start = time.perf_counter()
            try:
                files = {
                    "image": (f"field-{index % len(images)}.png", images[index % len(images)], "image/png")
                }
                response = await client.post("/v1/predict", files=files)
                status: int | str = response.status_code
                timings = response.json().get("server_timings_ms", {}) if status == 200 else {}
            except httpx.HTTPError as error:
                status, timings = type(error).__name__, {}
            return time.perf_counter() - start, status, timings

        warm = await one(0)
        if warm[1] != 200:
            raise RuntimeError(f"warm-up request failed: {warm[1]}")
        started = time.perf_counter()
        tasks = [asyncio.ensure_future(one(i)) for i in range(requests)]
        done, pending = await asyncio.wait(tasks, timeout=deadline)
        for task in pending:
            task.cancel()
        wall = time.perf_counter() - started
    results = [task.result() for task in done]
    ok = [r for r in results if r[1] == 200]
    errors = [str(r[1]) for r in results if r[1] != 200] + ["deadline"] * len(pending)
    if not ok:
        raise RuntimeError(f"no request succeeded: {errors[:5]}")
    latencies = [r[0] for r in ok]
    server = {key: statistics.median(r[2][key] / 1000 for r in ok) for key in ("queue", "predict", "encode")}
    return {
        "requests": requests, "concurrency": concurrency, "ok": len(ok), "errors": errors, "wall_s": wall,
        "throughput": len(ok) / wall, "p50": _percentile(latencies, 50), "p90": _percentile(latencies, 90),
        "p99": _percentile(latencies, 99), "max": max(latencies), "warm_s": warm[0], "server": server,
    }  # fmt: skip


def _start_server(model_dir: Path, port: int, log: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "unihema", "serve", "--model", str(model_dir), "--port", str(port),
        "--workers", "2", "--queue-size", "64", "--timeout", "300", "--device", "cpu",
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("the server did not answer /v1/health within 180 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--request-timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds for the whole load")
    parser.add_argument("--write-doc", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model_dir, log = Path(folder) / "model", Path(folder) / "server.log"
        model = UniHema.from_preset("tiny")
        model.preprocessor = INPUTS
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save_pretrained(model_dir)
        parameters = sum(p.numel() for p in model.parameters())
        del model
        port = _free_port()
        server = _start_server(model_dir, port, log)
        try:
            images = _fields(3)
            rss_idle = _status_mib(server.pid, "VmRSS")
            row = asyncio.run(
                _load(f"http://127.0.0.1:{port}", images, args.requests, args.concurrency,
                      args.request_timeout, args.deadline)
            )  # fmt: skip
            row["rss_idle"] = rss_idle
            row["rss_peak"] = _status_mib(server.pid, "VmHWM")
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        access_lines = sum(1 for line in log.read_text().splitlines() if line.startswith("{"))
    print(json.dumps(row, indent=2))
    load = os.getloadavg()[0]
    server_times = row["server"]
    lines = [
        TITLE, "",
        f"Command: `python benchmarks/bench_serve.py --requests {args.requests} --concurrency "
        f"{args.concurrency} --request-timeout {args.request_timeout:g} --deadline {args.deadline:g}` "
        f"(to be run alone; torch {torch.__version__}, {platform.machine()} CPU with {os.cpu_count()} cores "
        f"shared by the client and the server; 1-minute load average {load:.1f} at the end).", "",
        f"`unihema serve` in its own process on 127.0.0.1: the `tiny` preset ({parameters / 1e6:.1f} M "
        "parameters, random weights) with detection inputs of 256 px (at most 384 px), 2 workers, a queue "
        "of 64; one warm-up request, then all requests at once (httpx, one connection each), three "
        "256x256 synthetic fields (PNG) in turn, default tasks (detection, FoV morphology, segmentation). "
        "Latencies are the client's, from sending the upload to the whole JSON response.", "",
        PREDICTION, "",
        "| requests | concurrent | errors | p50 (s) | p90 (s) | p99 (s) | max (s) | wall (s) | "
        "throughput (req/s) | server RSS idle (MiB) | server peak RSS (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {row['requests']} | {row['concurrency']} | {len(row['errors'])} | {row['p50']:.2f} | "
        f"{row['p90']:.2f} | {row['p99']:.2f} | {row['max']:.2f} | {row['wall_s']:.1f} | "
        f"{row['throughput']:.2f} | {row['rss_idle']:.0f} | {row['rss_peak']:.0f} |", "",
        f"Server-side medians per request: waiting for a worker {server_times['queue']:.2f} s, the model "
        f"{server_times['predict']:.3f} s, overlay and exports {server_times['encode']:.3f} s; the warm-up "
        f"request took {row['warm_s']:.2f} s. Errors: {', '.join(row['errors']) or 'none'}. The server "
        f"wrote {access_lines} access-log lines (the health checks, the warm-up and the load).",
    ]  # fmt: skip
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write_doc:
        write_section(args.write_doc, TITLE, section)


if __name__ == "__main__":
    main()
