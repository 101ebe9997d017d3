"""Load test of the API server: N concurrent streaming clients on loopback for a bounded time.

Starts ``mamba-audio serve`` in a subprocess on a randomly initialised generator of ``--preset``
(speed does not depend on the weights), warms it up with one request (CUDA-graph capture, Triton
compilation), then runs ``--clients`` clients for ``--seconds``: each one asks for
``--stream-seconds`` of audio as raw s16le (``POST /v1/audio/generations``, ``response_format=pcm``)
and reads it as it streams in, request after request, until the time is up (requests under way
then finish). Per request it records

* time to first audio (TTFA): from sending the request to the first audio bytes;
* late chunks: pieces of audio that arrive after a player that started at the first piece would
  have run out of audio (the arrival time since the first piece exceeds the audio received before);
* dropped chunks: 20 ms chunks of the asked length that never arrived (a stream cut short);
* errors: non-200 answers, broken connections, timeouts.

Writes ``benchmarks/results/serve_load_<device>.json`` (and a copy under ``$OUT`` when set):

    python benchmarks/serve_load.py --device cpu                       # tiny preset, 4 clients, 20 s
    python benchmarks/serve_load.py --device cuda --clients 64         # sc09-6m, 60 s
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from mamba_audio.models import LMConfig, SaShiMiLM, backbone_preset
from streaming import device_label, percentile  # benchmarks/streaming.py
from results_io import save_result  # benchmarks/results_io.py


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def one_request(client: httpx.AsyncClient, url: str, seconds: float, rate: int, chunk_samples: int) -> dict:
    """Stream one generation; TTFA, late pieces, dropped chunks, or the error."""
    expected = max(1, round(seconds * rate))
    sent = time.perf_counter()
    first = None
    received = 0  # samples
    late = 0
    try:
        async with client.stream("POST", url, data={"seconds": str(seconds), "response_format": "pcm"}) as response:
            if response.status_code != 200:
                await response.aread()
                return {"error": f"HTTP {response.status_code}: {response.text[:200]}"}
            async for piece in response.aiter_raw():
                now = time.perf_counter()
                if first is None:
                    first = now
                elif now - first > received / rate:  # the player would have run dry before this piece
                    late += 1
                received += len(piece) // 2
    except (httpx.HTTPError, OSError) as err:
        return {"error": f"{type(err).__name__}: {err}"}
    if first is None:
        return {"error": "no audio"}
    return {"ttfa_ms": (first - sent) * 1000, "late": late,
            "dropped": math.ceil(max(0, expected - received) / chunk_samples), "samples": received,
            "seconds_taken": time.perf_counter() - sent}


async def run_clients(url: str, clients: int, seconds: float, stream_seconds: float, rate: int,
                      chunk_samples: int) -> list[dict]:
    deadline = time.perf_counter() + seconds
    results: list[dict] = []

    async def client_loop():
        async with httpx.AsyncClient(timeout=httpx.Timeout(120.0)) as client:
            while time.perf_counter() < deadline:
                results.append(await one_request(client, url, stream_seconds, rate, chunk_samples))

    await asyncio.gather(*(client_loop() for _ in range(clients)))
    return results


async def warm_up(url: str, rate: int, chunk_samples: int) -> dict:
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0)) as client:
        return await one_request(client, url, 0.1, rate, chunk_samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default=None, help="backbone preset (default: sc09-6m on CUDA, tiny on the CPU)")
    ap.add_argument("--clients", type=int, default=None, help="concurrent clients (default: 64 CUDA, 4 CPU)")
    ap.add_argument("--seconds", type=float, default=None, help="how long clients keep starting requests "
                                                               "(default: 60 CUDA, 20 CPU)")
    ap.add_argument("--stream-seconds", type=float, default=None, help="audio per request (default: 2 CUDA, 0.5 CPU)")
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    preset = args.preset or ("sc09-6m" if cuda else "tiny")
    clients = args.clients or (64 if cuda else 4)
    seconds = args.seconds or (60.0 if cuda else 20.0)
    stream_seconds = args.stream_seconds or (2.0 if cuda else 0.5)
    device = torch.device(args.device)
    name, label = device_label(device)

    torch.manual_seed(0)
    model = SaShiMiLM(LMConfig(backbone=backbone_preset(preset), sample_rate=args.sample_rate))
    chunk_samples = model.config.backbone.total_pool * max(1, round(0.02 * args.sample_rate
                                                                    / model.config.backbone.total_pool))
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "bench")
        server_cmd = [sys.executable, "-m", "mamba_audio.cli", "--quiet", "serve", "--model", f"bench={tmp}/bench",
                      "--no-voice", "--device", args.device, "--port", str(port), "--max-streams", str(clients),
                      "--max-seconds", str(max(stream_seconds, 1.0)), "--timeout", "600"]
        server = subprocess.Popen(server_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            started = time.monotonic()
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"server exited: {server.stdout.read()}")
                try:
                    if httpx.get(base + "/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() - started > 300:
                    raise SystemExit("server did not become ready in 300 s")
                time.sleep(0.2)
            url = base + "/v1/audio/generations"
            warm = asyncio.run(warm_up(url, args.sample_rate, chunk_samples))
            if "error" in warm:
                raise SystemExit(f"warm-up request failed: {warm['error']}")
            began = time.perf_counter()
            results = asyncio.run(run_clients(url, clients, seconds, stream_seconds, args.sample_rate, chunk_samples))
            wall = time.perf_counter() - began
        finally:
            server.terminate()
            server.wait(60)

    done = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    ttfa = [r["ttfa_ms"] for r in done]
    result = {
        "clients": clients,
        "seconds": seconds,
        "ttfa_ms": {"p50": percentile(ttfa, 50) if ttfa else None, "p99": percentile(ttfa, 99) if ttfa else None},
        "late_chunks": sum(r["late"] for r in done),
        "dropped_chunks": sum(r["dropped"] for r in done),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "requests": len(results),
        "audio_seconds_received": sum(r["samples"] for r in done) / args.sample_rate,
        "wall_seconds": wall,
        "aggregate_realtime_factor": sum(r["samples"] for r in done) / args.sample_rate / wall,
        "per_request_realtime_factor_p50": percentile([r["samples"] / args.sample_rate / r["seconds_taken"]
                                                       for r in done], 50) if done else None,
        "stream_seconds": stream_seconds,
        "chunk_samples": chunk_samples,
        "preset": preset,
        "sample_rate": args.sample_rate,
        "device": name,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "server_command": " ".join(shlex.quote(a) for a in server_cmd[1:]),
    }
    print(f"{clients} clients x {seconds:g} s on {name} ({preset}): {len(results)} requests, "
          f"TTFA p50 {result['ttfa_ms']['p50']} ms p99 {result['ttfa_ms']['p99']} ms, late {result['late_chunks']}, "
          f"dropped {result['dropped_chunks']}, errors {len(errors)}, "
          f"aggregate {result['aggregate_realtime_factor']:.3f}x real time")
    out = save_result(result, "serve_load", label, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
