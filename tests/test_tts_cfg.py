"""Classifier-free guidance on the text: text dropout in training, the doubled step in generation, the loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mamba_audio.models.sashimi import state_tensors
from mamba_audio.text import PAD_ID
from mamba_audio.tts import SpeechLoop, TextToSpeech
from test_tts import tiny_codec, tiny_tts
from test_tts_durations import DURATIONS


def batch(model, texts: list[str]):
    """Padded text, durations (1-2 frames per symbol), voices, and teacher-forced inputs of 9 frames."""
    text = model.pad_text([model.text.encode(t) for t in texts])
    generator = torch.Generator().manual_seed(1)
    durations = (torch.randint(1, 3, text.shape, generator=generator) * (text != PAD_ID))
    tokens = torch.randint(0, 16, (len(texts), model.config.num_codebooks, 9), generator=generator)
    return text, durations, torch.arange(len(texts)) % 2, tokens


def test_text_free_rows_read_the_pace_but_not_the_phones():
    """A dropped row's outputs do not depend on which symbols it was given, only on their timing; a kept row's do."""
    model = tiny_tts(num_codebooks=3, **DURATIONS).eval()
    text, durations, voice, tokens = batch(model, ["the red fox.", "the red fox."])
    text[1, text[1] != PAD_ID] = torch.randint(1, model.text.vocab_size, (int((text[1] != PAD_ID).sum()),))
    same_pace = durations[:1].expand(2, -1)  # the same length and timing, other phones
    inputs = model.shift(model.targets(tokens[:1].expand(2, -1, -1), torch.tensor([9, 9]))[0])
    with torch.no_grad():
        hidden, _ = model(text, voice[:1].expand(2), inputs, durations=same_pace, drop_text=torch.tensor([True, True]))
        read, _ = model(text, voice[:1].expand(2), inputs, durations=same_pace)
        slower, _ = model(text, voice[:1].expand(2), inputs, durations=same_pace * 2,
                          drop_text=torch.tensor([True, True]))
    torch.testing.assert_close(hidden[0], hidden[1])
    assert not torch.allclose(read[0], read[1]) and not torch.allclose(hidden, slower)
    with pytest.raises(ValueError, match="drop_text must be a \\(2,\\) bool"):
        model(text, voice, inputs, durations=durations, drop_text=torch.tensor([1, 0]))


@pytest.mark.parametrize("scale", [0.0, 2.5])
def test_the_guided_step_combines_the_rows_with_and_without_text(scale):
    """Stepping a doubled state with cfg_scale s gives l_u + s (l_c - l_u) of the full forward passes with and
    without the text, and the stop logits of the rows with it."""
    model = tiny_tts(num_codebooks=3, **DURATIONS).eval()
    text, durations, voice, tokens = batch(model, ["hello there", "hi"])
    inputs = model.shift(model.targets(tokens, torch.tensor([9, 5]))[0])
    ends = durations.cumsum(1)
    with torch.no_grad():
        with_text, stop = model(text, voice, inputs, durations=durations)
        without, _ = model(text, voice, inputs, durations=durations, drop_text=torch.tensor([True, True]))
        state = model.allocate_inference_cache(4)
        model.prefill_text(text, voice, state, cfg=True)
        logits, stops = [], []
        for s in range(inputs.shape[1]):
            ids = model.guide_ids(text, ends[:, -1], torch.full((2, 1), s), ends=ends)
            step, step_stop = model.step_audio(inputs[:, s], voice, state, (ids[0][:, 0], ids[1][:, 0]), scale)
            logits.append(step), stops.append(step_stop)
    torch.testing.assert_close(torch.stack(logits, 1), without + scale * (with_text - without), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack(stops, 1), stop, atol=1e-5, rtol=1e-5)


def test_text_dropout_hides_the_drawn_rows_in_training_only():
    model, plain = tiny_tts(cfg_text_dropout=0.5, **DURATIONS), tiny_tts(**DURATIONS)
    text, durations, voice, tokens = batch(model, ["the red fox.", "the big cat.", "hi", "a dog"])
    lengths = torch.tensor([9, 9, 6, 7])
    torch.manual_seed(1)
    drop = torch.rand(4) < 0.5
    assert drop.any() and not drop.all()  # the seed draws both kinds of row
    with torch.no_grad():
        model.eval(), plain.eval()
        assert model.losses(text, voice, tokens, lengths, durations=durations) == \
            plain.losses(text, voice, tokens, lengths, durations=durations)
        model.train()
        torch.manual_seed(1)
        trained = model.losses(text, voice, tokens, lengths, durations=durations)["nll_bits"]
        seq, valid, _, _ = model.targets(tokens, lengths)
        logits, _ = model(text, voice, model.shift(seq), durations=durations, drop_text=drop)
    expected = F.cross_entropy(logits[valid].float(), seq[valid]) / math.log(2)
    torch.testing.assert_close(trained, expected)
    with pytest.raises(ValueError, match="cfg_text_dropout"):
        tiny_tts(cfg_text_dropout=1.0)


def test_guided_streams_equal_synthesize_beside_others_and_the_scale_matters():
    """With cfg_scale != 1 the loop keeps each stream's text-free copy (twice the state rows); a stream joining
    mid-flight speaks as alone, and the scale changes what is said."""
    codec = tiny_codec()
    model = tiny_tts(**DURATIONS, frame_rate=codec.frame_rate, max_seconds=0.02, stop_threshold=0.9999,
                     cfg_scale=3.0)
    tts = TextToSpeech(model, codec, max_streams=2)
    plain_loop = SpeechLoop(model, codec, max_streams=2, cfg_scale=1.0)
    assert all(guided.shape[0] == 2 * plain.shape[0]
               for guided, plain in zip(state_tensors(tts.loop.state), state_tensors(plain_loop.state)))
    texts = ["the red fox.", "hi there."]
    alone = [tts.synthesize(text, seed=i) for i, text in enumerate(texts)]
    a = tts.start(texts[0], seed=0, chunk_samples=24)
    first = next(a)
    b = tts.start(texts[1], seed=1)
    torch.testing.assert_close(torch.cat([chunk.audio for chunk in b]), alone[1])
    torch.testing.assert_close(torch.cat([first.audio] + [chunk.audio for chunk in a]), alone[0])
    unguided = TextToSpeech(model, codec, max_streams=2, cfg_scale=1.0).synthesize(texts[0], seed=0)
    assert not torch.equal(unguided, alone[0])
    for bad in (-1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="cfg_scale must be a finite number >= 0"):
            SpeechLoop(model, codec, cfg_scale=bad)
    with pytest.raises(ValueError, match="cfg_scale"):
        tiny_tts(cfg_scale=-0.5)
