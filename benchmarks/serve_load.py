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

With ``--task speech`` the clients speak instead (``POST /v1/audio/speech``, raw s16le, seed 0) with
the default voice the package ships, each cycling through grammar sentences of its held-out kind; a
request's expected length is that of the same sentence spoken alone at warm-up (seeded, so the same).

Writes ``benchmarks/results/serve_load_<device>.json`` (``serve_load_speech_<device>.json`` for speech;
and a copy under ``$OUT`` when set):

    python benchmarks/serve_load.py --device cpu                       # tiny preset, 4 clients, 20 s
    python benchmarks/serve_load.py --device cuda --clients 64         # sc09-6m, 60 s
    python benchmarks/serve_load.py --device cpu --task speech         # the default voice, 4 clients, 20 s
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


SENTENCES = ("Emma rode to the park at lunch.", "Please find the hat before sunset.",
             "The quiet bird washed the bottle.", "Did the child wash the book near the village?")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request_body(task: str, seconds: float, sentence: int) -> dict:
    """httpx keyword arguments of one request: a generation of ``seconds`` or sentence ``sentence`` spoken."""
    if task == "speech":
        return {"json": {"model": "tts-1", "input": SENTENCES[sentence % len(SENTENCES)], "response_format": "pcm",
                         "seed": 0}}
    return {"data": {"seconds": str(seconds), "response_format": "pcm"}}


async def one_request(client: httpx.AsyncClient, url: str, body: dict, expected: int, rate: int,
                      chunk_samples: int) -> dict:
    """Stream one request of ``expected`` samples; TTFA, late pieces, dropped chunks, or the error."""
    sent = time.perf_counter()
    first = None
    received = 0  # samples
    late = 0
    try:
        async with client.stream("POST", url, **body) as response:
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


async def run_clients(url: str, task: str, clients: int, seconds: float, stream_seconds: float, expected: list[int],
                      rate: int, chunk_samples: int) -> list[dict]:
    """Each client requests until ``seconds`` are up; client i starts at sentence i. ``expected``: the
    samples of each sentence (speech) or a one-element list (generation)."""
    deadline = time.perf_counter() + seconds
    results: list[dict] = []

    async def client_loop(index: int):
        async with httpx.AsyncClient(timeout=httpx.Timeout(120.0)) as client:
            while time.perf_counter() < deadline:
                body = request_body(task, stream_seconds, index)
                results.append(await one_request(client, url, body, expected[index % len(expected)], rate,
                                                 chunk_samples))
                index += 1

    await asyncio.gather(*(client_loop(i) for i in range(clients)))
    return results


async def warm_up(url: str, task: str, rate: int, chunk_samples: int) -> list[dict]:
    """One request (generation) or each sentence once (speech): compilation, and the sentences' lengths."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0)) as client:
        if task == "speech":
            return [await one_request(client, url, request_body(task, 0, i), 1, rate, chunk_samples)
                    for i in range(len(SENTENCES))]
        return [await one_request(client, url, request_body(task, 0.1, 0), 1, rate, chunk_samples)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--task", choices=("generation", "speech"), default="generation",
                    help="speech: the packaged default voice on /v1/audio/speech")
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
    speech = args.task == "speech"
    if speech:
        from mamba_audio.tts import DEFAULT_CHECKPOINT

        if not (DEFAULT_CHECKPOINT / "tts" / "model.safetensors").is_file():
            raise SystemExit(f"--task speech needs the packaged default voice in {DEFAULT_CHECKPOINT}")
    device = torch.device(args.device)
    name, label = device_label(device)

    torch.manual_seed(0)
    model = SaShiMiLM(LMConfig(backbone=backbone_preset(preset), sample_rate=args.sample_rate))
    chunk_samples = model.config.backbone.total_pool * max(1, round(0.02 * args.sample_rate
                                                                    / model.config.backbone.total_pool))
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "bench")
        served = [] if speech else ["--model", f"bench={tmp}/bench", "--no-voice"]  # speech: the default voice
        server_cmd = [sys.executable, "-m", "mamba_audio.cli", "--quiet", "serve", *served, "--device", args.device,
                      "--port", str(port), "--max-streams", str(clients),
                      "--max-seconds", str(30.0 if speech else max(stream_seconds, 1.0)), "--timeout", "600"]
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
            url = base + ("/v1/audio/speech" if speech else "/v1/audio/generations")
            warm = asyncio.run(warm_up(url, args.task, args.sample_rate, chunk_samples))
            failed = [w["error"] for w in warm if "error" in w]
            if failed:
                raise SystemExit(f"warm-up request failed: {failed[0]}")
            expected = [w["samples"] for w in warm] if speech else [max(1, round(stream_seconds * args.sample_rate))]
            began = time.perf_counter()
            results = asyncio.run(run_clients(url, args.task, clients, seconds, stream_seconds, expected,
                                              args.sample_rate, chunk_samples))
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
        "task": args.task,
        "stream_seconds": None if speech else stream_seconds,
        "sentence_seconds": [n / args.sample_rate for n in expected] if speech else None,
        "chunk_samples": chunk_samples,
        "preset": "the packaged default voice" if speech else preset,
        "sample_rate": args.sample_rate,
        "device": name,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "server_command": " ".join(shlex.quote(a) for a in server_cmd[1:]),
    }
    print(f"{clients} clients x {seconds:g} s on {name} ({result['preset']}): {len(results)} requests, "
          f"TTFA p50 {result['ttfa_ms']['p50']} ms p99 {result['ttfa_ms']['p99']} ms, late {result['late_chunks']}, "
          f"dropped {result['dropped_chunks']}, errors {len(errors)}, "
          f"aggregate {result['aggregate_realtime_factor']:.3f}x real time")
    out = save_result(result, "serve_load_speech" if speech else "serve_load", label, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
