"""The default voice shipped in the package (mamba_audio/pretrained/tts_default): small, float32 once loaded, heard."""

import torch

from mamba_audio.intelligibility import Transcriber
from mamba_audio.metrics import word_error_rate
from mamba_audio.tts import DEFAULT_CHECKPOINT, TextToSpeech

# grammar sentences outside the training corpus (new combinations of its words)
SENTENCES = ["The red fox ran to the garden.", "Please open the door before dinner.", "Anna found the old key again."]
# the shipped voice: 24.5% on the first 120 held-out sentences, 25.3% on 520 more (recipes/tts/results.json);
# an unintelligible voice gives 90% and more
WER_LIMIT = 0.6


def test_default_voice_is_small_and_loads_as_float32():
    stored = sum(f.stat().st_size for f in DEFAULT_CHECKPOINT.rglob("*.safetensors"))
    # 6.4 MB of float16 model, 11.3 MB of float32 codec (half of it the learned mel inverse)
    assert stored < 18 * 2**20, f"the default voice stores {stored / 2**20:.1f} MiB"
    tts = TextToSpeech.from_pretrained(device="cpu", max_streams=1)
    assert {p.dtype for p in tts.model.parameters()} == {torch.float32}
    assert tts.voices == ["flite:rms"] and tts.sample_rate == 16000
    assert tts.model.config.guide_durations and tts.loop.temperature == tts.model.config.temperature == 0.15


def test_default_voice_speaks_words_the_recogniser_hears():
    tts = TextToSpeech.from_pretrained(device="cpu", max_streams=len(SENTENCES))
    streams = [tts.start(text, seed=i) for i, text in enumerate(SENTENCES)]  # one batched loop
    audio = [torch.cat([chunk.audio for chunk in stream]) for stream in streams]
    for clip in audio:
        assert 0.5 < clip.numel() / tts.sample_rate < 8 and clip.abs().max() > 0.05
    transcribe = Transcriber()
    heard = [transcribe(clip, tts.sample_rate) for clip in audio]
    assert word_error_rate(SENTENCES, heard) < WER_LIMIT, heard
