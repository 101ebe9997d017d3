"""The recipes/tts scoring scripts on a small real corpus: evaluate.py (WER of generated speech beside the
recordings) and compare_codecs.py (codec round trips), with pocketsphinx."""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path
from unittest.mock import patch

import pytest

from mamba_audio.data.sentences import SentenceCorpus, build_sentence_corpus

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tts"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Ten flite sentences, two of them held out."""
    return build_sentence_corpus(tmp_path_factory.mktemp("recipes") / "corpus", count=10, voices=("flite:rms",),
                                 heldout_fraction=0.2, progress=False)


def run_script(name: str, *argv: str) -> None:
    with patch.object(sys, "argv", [name, *argv]):
        runpy.run_path(str(RECIPE / name), run_name="__main__")


def test_evaluate_scores_generated_speech_beside_the_recordings(corpus, tmp_path):
    """Recordings given as the generated speech score exactly as the recordings; a missing folder is named."""
    heldout = SentenceCorpus(corpus, split="heldout")
    generated = tmp_path / "generated"
    generated.mkdir()
    for clip_id, _, _ in heldout.entries:
        shutil.copy(Path(corpus) / "wavs" / f"{clip_id}.wav", generated / f"{clip_id}.wav")
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"device": "test", "time_to_first_audio_ms": 1.0}))
    out = tmp_path / "results.json"
    run_script("evaluate.py", "--corpus", str(corpus), "--generated", str(generated), "--run", str(run),
               "--out", str(out))
    results = json.loads(out.read_text())
    assert results["sentences"] == len(heldout) == 2 and results["device"] == "test"
    assert results["wer_generated"] == results["wer_corpus_recordings"] < 0.5
    with pytest.raises(SystemExit, match="holds none of the 2 held-out clips"):
        run_script("evaluate.py", "--corpus", str(corpus), "--generated", str(tmp_path / "run.json.d"))


def test_compare_codecs_scores_round_trips_and_chunked_decoding(corpus, tmp_path):
    out = tmp_path / "codecs.json"
    run_script("compare_codecs.py", "--corpus", str(corpus), "--codec", "mulaw8", "--codec", "mulaw4",
               "--sentences", "2", "--out", str(out))
    results = json.loads(out.read_text())
    assert results["sentences"] == 2 and set(results["recordings"]["wer"]) == {"all", "flite"}
    fine, coarse = results["codecs"]["mulaw8"], results["codecs"]["mulaw4"]
    assert fine["chunked_vs_whole_mrstft_distance"] == 0.0  # mu-law has no context across frames
    assert 0 < fine["mrstft_distance"] < coarse["mrstft_distance"]
    assert fine["wer"]["all"] <= results["recordings"]["wer"]["all"] + 0.25
    # the streamed decodes are the same audio for mu-law
    assert fine["chunked_wer"] == fine["chunked_restarting_wer"] == fine["wer"]
    assert fine["chunked_mrstft_distance"] == fine["chunked_restarting_mrstft_distance"] == fine["mrstft_distance"]
    second = tmp_path / "second.json"  # --first: from the second held-out sentence on
    run_script("compare_codecs.py", "--corpus", str(corpus), "--codec", "mulaw8", "--first", "1", "--out", str(second))
    ids = [clip_id for clip_id, _, _ in SentenceCorpus(corpus, split="heldout").entries]
    assert results["ids"] == ids and json.loads(second.read_text())["ids"] == ids[1:]
    with pytest.raises(SystemExit, match="no held-out sentences from 2"):
        run_script("compare_codecs.py", "--corpus", str(corpus), "--codec", "mulaw8", "--first", "2")


def test_transcripts_do_not_depend_on_what_was_transcribed_before(corpus):
    """pocketsphinx adapts its feature normalisation across utterances unless reset: the same clips
    transcribed in two orders must give the same transcripts."""
    from mamba_audio.intelligibility import Transcriber

    clips = [item["audio"] for item in SentenceCorpus(corpus, sample_rate=16000)]
    transcribe = Transcriber()
    forward = [transcribe(clip, 16000) for clip in clips]
    backward = [transcribe(clip, 16000) for clip in reversed(clips)][::-1]
    assert forward == backward and sum(map(bool, forward)) >= len(clips) - 1
