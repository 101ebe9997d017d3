"""Word error rates by pocketsphinx: generated speech of the held-out sentences and the corpus's own recordings.

    python recipes/tts/evaluate.py --corpus CORPUS --generated DIR [--run DIR/../run.json] [--out results.json]

DIR (a folder, or a .tar of them: recipes/tts/gpu_train.py writes OUT/generated.tar) holds <id>.wav for
held-out clip ids; the held-out clips it holds are scored, generated and recorded alike.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
from pathlib import Path

from mamba_audio.audio import load_audio
from mamba_audio.data.sentences import SentenceCorpus
from mamba_audio.intelligibility import RECOGNIZER_SAMPLE_RATE, Transcriber
from mamba_audio.metrics import word_error_rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--generated", required=True)
    parser.add_argument("--run", help="run.json of the GPU run, merged into the results")
    parser.add_argument("--out")
    args = parser.parse_args()
    generated_dir = Path(args.generated)
    if generated_dir.is_file():  # a .tar of the wavs
        unpacked = tempfile.TemporaryDirectory(prefix="generated-")
        with tarfile.open(generated_dir) as archive:
            archive.extractall(unpacked.name, filter="data")
        generated_dir = Path(unpacked.name)
    heldout = SentenceCorpus(args.corpus, split="heldout", sample_rate=RECOGNIZER_SAMPLE_RATE)
    transcribe = Transcriber()
    references, generated, recorded = [], [], []
    spoken = [(index, clip_id, text) for index, (clip_id, text, _) in enumerate(heldout.entries)
              if (generated_dir / f"{clip_id}.wav").is_file()]
    if not spoken:
        raise SystemExit(f"{args.generated} holds none of the {len(heldout)} held-out clips of {args.corpus}")
    for index, clip_id, text in spoken:
        references.append(text)
        recorded.append(transcribe(heldout[index]["audio"], RECOGNIZER_SAMPLE_RATE))
        wav = load_audio(generated_dir / f"{clip_id}.wav", RECOGNIZER_SAMPLE_RATE)
        generated.append(transcribe(wav, RECOGNIZER_SAMPLE_RATE))
    results = {"wer_generated": word_error_rate(references, generated),
               "wer_corpus_recordings": word_error_rate(references, recorded), "sentences": len(references),
               "examples": [{"text": r, "generated": g, "recording": c}
                            for r, g, c in list(zip(references, generated, recorded))[:10]]}
    if args.run:
        results = {**json.loads(Path(args.run).read_text()), **results}
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
