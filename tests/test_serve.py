"""The API server on loopback: real HTTP and WebSocket clients against uvicorn in a thread, tiny models."""

import io
import json
import threading
import time

import httpx
import numpy as np
import openai
import pytest
import schemathesis
import soundfile as sf
import torch
import websockets.sync.client as ws_client

from mamba_audio.models import ClassifierConfig, LMConfig, SaShiMiClassifier, SaShiMiLM, backbone_preset
from mamba_audio.serve import ServeConfig, create_app, make_server, serve_models
from mamba_audio.serve.encoding import wav_header
from tiny_voice import VOICES, tiny_voice

RATE = 8000
CLASSES = ["low", "high"]
SECONDS = 0.1  # 800 samples: five 20 ms chunks


def tiny_models():
    torch.manual_seed(0)
    lm = SaShiMiLM(LMConfig(backbone=backbone_preset("tiny", n_layers=1), sample_rate=RATE, num_classes=2,
                            class_names=CLASSES))
    clf = SaShiMiClassifier(ClassifierConfig(backbone=backbone_preset("tiny", n_layers=1, bidirectional=True),
                                             sample_rate=RATE, num_classes=2, class_names=CLASSES))
    return {"lm": lm, "clf": clf, "voice": tiny_voice()}


class LiveServer:
    """uvicorn serving the app in a thread on a free loopback port."""

    def __init__(self, config: ServeConfig, models=None):
        self.app = create_app(serve_models(models or tiny_models(), config.max_streams), config)
        self.server = make_server(self.app, port=0, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/v1/audio/stream"

    def streams(self) -> int:
        return httpx.get(self.url + "/ready").json()["streams"]

    def wait_streams(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.streams() != count:
            assert time.monotonic() < deadline, f"open streams stayed at {self.streams()}, expected {count}"
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def live():
    server = LiveServer(ServeConfig(max_streams=2, max_seconds=2.0, max_upload_bytes=64_000, max_upload_seconds=1.0,
                                    request_timeout_s=60.0, idle_timeout_s=5.0, shutdown_grace_s=0.5))
    yield server
    server.stop()


def wav_samples(body: bytes) -> np.ndarray:
    """The samples of a streamed wav: the header must say 'unknown length', the rest is s16le."""
    assert body[:44] == wav_header(RATE)
    return np.frombuffer(body[44:], dtype="<i2")


def generate(live, **fields):
    data = {"seconds": str(SECONDS), "label": "low", "seed": "3", **{k: str(v) for k, v in fields.items()}}
    return httpx.post(live.url + "/v1/audio/generations", data=data, timeout=60)


def assert_error(response, status, *words):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"]
    return error


# -- status ----------------------------------------------------------------------------------------
def test_health_ready_and_models(live):
    assert httpx.get(live.url + "/health").json() == {"status": "ok"}
    assert httpx.get(live.url + "/ready").json() == {"status": "ready", "streams": 0, "max_streams": 2}
    models = {m["id"]: m for m in httpx.get(live.url + "/v1/models").json()["data"]}
    assert models["lm"]["kind"] == "generator" and models["lm"]["classes"] == CLASSES
    assert models["clf"]["kind"] == "classifier" and models["clf"]["sample_rate"] == RATE
    assert models["voice"]["kind"] == "speech" and models["voice"]["voices"] == VOICES
    assert httpx.get(live.url + "/v1/models/lm").json()["id"] == "lm"
    assert_error(httpx.get(live.url + "/v1/models/nope"), 404, "nope")


# -- streaming generation --------------------------------------------------------------------------
def test_generation_streams_chunks_before_it_ends(live):
    pieces, streams_after_first = [], None
    with httpx.stream("POST", live.url + "/v1/audio/generations", timeout=60,
                      data={"seconds": "0.3", "label": "high", "seed": "1"}) as response:
        assert response.status_code == 200 and response.headers["x-sample-rate"] == str(RATE)
        assert response.headers["transfer-encoding"] == "chunked"
        for piece in response.iter_raw():
            pieces.append(piece)
            if len(pieces) == 2:  # the header and the first audio: the stream must still be generating
                streams_after_first = live.streams()
    assert streams_after_first == 1
    assert len(pieces) >= 5
    samples = wav_samples(b"".join(pieces))
    assert samples.shape == (int(0.3 * RATE),)


def test_formats_carry_the_same_seeded_audio(live):
    wav = wav_samples(generate(live).content)
    assert wav.shape == (int(SECONDS * RATE),)
    pcm = generate(live, response_format="pcm")
    assert pcm.headers["content-type"] == "audio/L16"
    np.testing.assert_array_equal(np.frombuffer(pcm.content, dtype="<i2"), wav)
    flac = generate(live, response_format="flac").content
    assert flac[:4] == b"fLaC"
    # the STREAMINFO's total length is 0 ("unknown"): libsndfile decodes the frames, then fails at the end
    decoded, reader = [], sf.SoundFile(io.BytesIO(flac))
    with pytest.raises(sf.LibsndfileError):
        while True:
            block = reader.read(100, dtype="int16")
            decoded.append(block)
            assert len(block) == 100
    decoded = np.concatenate(decoded)
    assert len(decoded) >= len(wav) - 100
    np.testing.assert_array_equal(decoded, wav[: len(decoded)])


def test_generation_continues_an_uploaded_prompt(live, tmp_path):
    stereo = 0.3 * np.sin(2 * np.pi * 300 * np.arange(4000) / 16000)[:, None] * np.ones((1, 2))
    path = tmp_path / "prompt.wav"
    sf.write(path, stereo, 16000)  # 16 kHz stereo: resampled to 8 kHz and mixed to mono
    with open(path, "rb") as handle:
        response = httpx.post(live.url + "/v1/audio/generations", files={"prompt": ("prompt.wav", handle)},
                              data={"seconds": str(SECONDS), "label": "low", "response_format": "pcm"}, timeout=60)
    assert response.status_code == 200, response.text
    assert len(response.content) == 2 * int(SECONDS * RATE)


# -- speech ----------------------------------------------------------------------------------------
SPEECH = {"model": "tts-1", "input": "the red fox.", "voice": VOICES[1], "seed": 4}


@pytest.fixture(scope="module")
def spoken():
    """What the served voice says for SPEECH, from an identical voice in this process, as s16le samples."""
    audio = tiny_voice().synthesize(SPEECH["input"], voice=SPEECH["voice"], seed=SPEECH["seed"])
    return np.round(np.clip(audio.numpy(), -1, 1) * 32767).astype("<i2")


def test_speech_streams_over_http(live, spoken):
    pieces, streams_after_first = [], None
    with httpx.stream("POST", live.url + "/v1/audio/speech", json=SPEECH, timeout=60) as response:
        assert response.status_code == 200 and response.headers["x-sample-rate"] == "16000"
        for piece in response.iter_raw():
            pieces.append(piece)
            if len(pieces) == 2:
                streams_after_first = live.streams()
    assert streams_after_first == 1 and len(pieces) >= 4
    body = b"".join(pieces)
    assert body[:44] == wav_header(16000)
    np.testing.assert_array_equal(np.frombuffer(body[44:], "<i2"), spoken)


def test_speech_through_the_openai_client_streams(live, spoken):
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="not-needed", max_retries=0)
    pieces, streams_after_first = [], None
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice=SPEECH["voice"], input=SPEECH["input"], response_format="pcm",
            extra_body={"seed": SPEECH["seed"]}) as response:
        for piece in response.iter_bytes():
            pieces.append(piece)
            if len(pieces) == 1:
                streams_after_first = live.streams()
    assert streams_after_first == 1 and len(pieces) >= 3
    np.testing.assert_array_equal(np.frombuffer(b"".join(pieces), "<i2"), spoken)
    with pytest.raises(openai.BadRequestError, match="unknown voice"):
        client.audio.speech.create(model="tts-1", voice="alloy", input="hello")


def test_speech_refusals(live):
    url = live.url + "/v1/audio/speech"
    assert_error(httpx.post(url, json={**SPEECH, "voice": "nobody"}), 400, "nobody", VOICES[0])
    assert_error(httpx.post(url, json={**SPEECH, "input": "a" * 301}), 400, "300")
    assert_error(httpx.post(url, json={**SPEECH, "input": "   "}), 400, "empty")
    assert_error(httpx.post(url, json={**SPEECH, "input": "r2d2"}), 400, "unsupported")
    assert_error(httpx.post(url, json={**SPEECH, "speed": 10}), 400, "speed")
    assert_error(httpx.post(url, json={**SPEECH, "response_format": "opus"}), 400, "wav")
    assert_error(httpx.post(url, json={**SPEECH, "instructions": "whisper"}), 400, "instructions")
    assert_error(httpx.post(url, json={**SPEECH, "model": "lm"}), 404, "voice")
    assert_error(httpx.post(url, json={**SPEECH, "colour": "blue"}), 400, "colour")
    assert_error(httpx.post(url, json={"input": "hi"}), 400, "model")
    assert live.streams() == 0


# -- bad requests ----------------------------------------------------------------------------------
def test_malformed_requests_get_json_errors(live):
    url = live.url + "/v1/audio/generations"
    assert_error(httpx.post(url, data={"seconds": "abc"}), 400, "seconds")
    assert_error(httpx.post(url, data={"seconds": "100", "label": "low"}), 400, "seconds")
    assert_error(httpx.post(url, data={"seconds": "nan", "label": "low"}), 400, "seconds")
    assert_error(httpx.post(url, data={"label": "purple"}), 400, "purple")
    assert_error(httpx.post(url, data={}), 400, "class-conditional")
    assert_error(httpx.post(url, data={"label": "low", "top_p": "2"}), 400, "top_p")
    assert_error(httpx.post(url, data={"label": "low", "model": "clf"}), 404, "clf")
    error = assert_error(httpx.post(url, data={"label": "low", "response_format": "mp3"}), 400, "flac", "pcm", "wav")
    assert error["param"] == "response_format"
    assert_error(httpx.post(live.url + "/v1/audio/speech", content=b"{not json",
                            headers={"content-type": "application/json"}), 400)
    assert_error(httpx.get(url), 405)
    assert_error(httpx.get(live.url + "/v2/nothing"), 404)
    assert live.streams() == 0


def test_bad_uploads_are_refused_with_the_reason(live, tmp_path):
    url = live.url + "/v1/audio/classifications"

    def upload(name, data):
        return httpx.post(url, files={"file": (name, data)}, timeout=60)

    nan_wav = io.BytesIO()
    sf.write(nan_wav, np.full(800, np.nan, dtype=np.float32), RATE, subtype="FLOAT", format="WAV")
    long_wav = io.BytesIO()
    sf.write(long_wav, np.zeros(3 * RATE, dtype=np.int16), RATE, format="WAV")  # 3 s > 1 s limit, 48 kB
    assert_error(upload("empty.wav", b""), 400, "empty")
    assert_error(upload("corrupt.wav", b"RIFF\x00\x00 not audio at all"), 400, "corrupt.wav")
    assert_error(upload("nan.wav", nan_wav.getvalue()), 400, "NaN")
    assert_error(upload("long.wav", long_wav.getvalue()), 400, "longer than")
    assert_error(upload("huge.wav", bytes(100_000)), 413, "64000")
    assert_error(httpx.post(url, data={"model": "clf"}), 400, "file")
    # a body without Content-Length is counted as it arrives
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    chunked = httpx.post(url, content=iter([head] + [b"x" * 40_000] * 3),
                         headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(chunked, 413)


def test_classification_gives_probabilities(live, tmp_path):
    clip = io.BytesIO()
    sf.write(clip, 0.5 * np.sin(np.arange(2000) * 0.2), 11025, format="WAV")  # another rate: resampled
    response = httpx.post(live.url + "/v1/audio/classifications", files={"file": ("a.wav", clip.getvalue())})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [x["label"] for x in body["labels"]] != [] and {x["label"] for x in body["labels"]} == set(CLASSES)
    assert abs(sum(x["probability"] for x in body["labels"]) - 1) < 1e-5
    assert body["labels"][0]["probability"] >= body["labels"][1]["probability"]


# -- limits and disconnects ------------------------------------------------------------------------
def test_stream_limit_429_and_disconnects_free_streams(live):
    clients = [httpx.Client(timeout=60) for _ in range(2)]
    responses = []
    try:
        for client in clients:
            request = client.build_request("POST", live.url + "/v1/audio/generations",
                                           data={"seconds": "2", "label": "low"})
            responses.append(client.send(request, stream=True))
            assert responses[-1].status_code == 200
        assert live.streams() == 2
        refused = generate(live)
        error = assert_error(refused, 429, "busy")
        assert error["type"] == "rate_limit_error" and refused.headers["retry-after"]
        next(responses[0].iter_raw())
    finally:
        for response in responses:
            response.close()
        for client in clients:
            client.close()
    live.wait_streams(0, timeout=5)  # both hung up long before their 2 s of audio were generated
    assert generate(live).status_code == 200


# -- WebSocket -------------------------------------------------------------------------------------
def test_websocket_session_streams_frames_and_stops(live):
    with ws_client.connect(live.ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "start", "task": "generation", "seconds": SECONDS, "label": "low", "seed": 3}))
        started = json.loads(ws.recv(timeout=30))
        assert started["type"] == "started" and started["sample_rate"] == RATE
        frames = []
        while isinstance(message := ws.recv(timeout=30), bytes):
            frames.append(message)
        done = json.loads(message)
        assert done == {"type": "done", "samples": int(SECONDS * RATE), "reason": "length"}
        assert len(frames) >= 3
        # the same seed over HTTP gives the same samples
        np.testing.assert_array_equal(np.frombuffer(b"".join(frames), "<i2"), wav_samples(generate(live).content))

        ws.send(json.dumps({"type": "start", "task": "generation", "seconds": 2, "label": "high"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "started"
        assert isinstance(ws.recv(timeout=30), bytes)
        ws.send(json.dumps({"type": "stop"}))
        while isinstance(message := ws.recv(timeout=30), bytes):
            pass
        done = json.loads(message)
        assert done["reason"] == "stopped" and done["samples"] < 2 * RATE
        live.wait_streams(0, timeout=5)

        ws.send(json.dumps({"type": "start", "task": "speech", **SPEECH}))
        assert json.loads(ws.recv(timeout=30))["sample_rate"] == 16000
        frames = []
        while isinstance(message := ws.recv(timeout=30), bytes):
            frames.append(message)
        assert json.loads(message)["reason"] == "finished" and len(frames) >= 2

        ws.send("not json")
        assert "JSON" in json.loads(ws.recv(timeout=10))["error"]["message"]
        ws.send(json.dumps({"type": "start", "task": "generation", "label": "purple"}))
        assert "purple" in json.loads(ws.recv(timeout=10))["error"]["message"]
        ws.send(json.dumps({"type": "start", "task": "dance"}))
        assert json.loads(ws.recv(timeout=10))["error"]["param"] == "task"


def test_websocket_disconnect_frees_its_stream(live):
    with ws_client.connect(live.ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "start", "task": "generation", "seconds": 2, "label": "low"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "started"
        assert isinstance(ws.recv(timeout=30), bytes)
    live.wait_streams(0, timeout=5)


# -- shutdown --------------------------------------------------------------------------------------
def test_shutdown_ends_open_streams_cleanly():
    server = LiveServer(ServeConfig(max_streams=2, max_seconds=30.0, shutdown_grace_s=0.3))
    with httpx.stream("POST", server.url + "/v1/audio/generations", timeout=60,
                      data={"seconds": "30", "label": "low", "response_format": "pcm"}) as response:
        body = response.iter_raw()
        pieces = [next(body)]
        server.server.handle_exit(2, None)  # what SIGINT does
        started = time.monotonic()
        pieces.extend(body)  # ends normally (no RemoteProtocolError) after the grace time
    assert time.monotonic() - started < 10
    assert 0 < len(b"".join(pieces)) < 2 * 30 * RATE
    server.thread.join(15)
    assert not server.thread.is_alive()


def test_cli_serve_answers_then_exits_on_sigint(tmp_path):
    import signal
    import socket
    import subprocess
    import sys

    models = tiny_models()
    lm_dir = models["lm"].save_pretrained(tmp_path / "lm")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "mamba_audio.cli", "--quiet", "serve", "--model", f"digits={lm_dir}",
                                "--port", str(port), "--device", "cpu", "--shutdown-grace", "0.2", "--no-voice"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "mamba-audio serve did not become ready"
            time.sleep(0.2)
        assert [m["id"] for m in httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]] == ["digits"]
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()


# -- fuzzing ---------------------------------------------------------------------------------------
def test_fuzz_from_the_openapi_spec_finds_no_server_error():
    """schemathesis draws valid and invalid requests for every operation of /openapi.json: no 5xx, no hang,
    every refusal in the JSON error shape."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    server = LiveServer(ServeConfig(max_streams=2, max_seconds=0.05, max_upload_bytes=64_000,
                                    max_upload_seconds=0.5, request_timeout_s=20.0))
    calls: dict[str, set] = {}
    try:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(max_examples=10, deadline=None, database=None, derandomize=True,
                          suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
                def check(case):
                    response = case.call(timeout=30)
                    calls.setdefault(operation.label, set()).add(response.status_code)
                    assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
                    if response.status_code >= 400:
                        assert response.json()["error"]["message"]

                try:
                    check()
                except Unsatisfiable:  # nothing to make invalid (an operation without parameters)
                    pass
    finally:
        server.stop()
    assert len(calls) == 7 and any(s >= 400 for codes in calls.values() for s in codes)
