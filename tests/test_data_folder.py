"""AudioFolder on small Speech Commands-style fixtures, and collate_audio."""

import numpy as np
import pytest
import soundfile as sf
import torch

from mamba_audio.audio import AudioError
from mamba_audio.data import AudioFolder, DataLayoutError, collate_audio
from mamba_audio.tokenizers import MuLawTokenizer

RATE = 16_000


def write(path, num_samples, rate=RATE, value=0.25, channels=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(-value, value, num_samples, dtype=np.float32)
    sf.write(path, ramp if channels == 1 else np.stack([ramp] * channels, axis=1), rate,
             subtype="FLOAT" if path.suffix == ".wav" else None)
    return path


@pytest.fixture
def speech_commands(tmp_path):
    """root/{no,yes}/*.wav with split lists, a background-noise folder and a stray text file."""
    root = tmp_path / "sc"
    for label in ("yes", "no"):
        for i in range(4):
            write(root / label / f"spk{i}_nohash_0.wav", 800 + 100 * i)
    write(root / "_background_noise_" / "white.wav", 5000)
    (root / "README.txt").write_text("not audio")
    (root / "validation_list.txt").write_text("yes/spk0_nohash_0.wav\nno/spk0_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("yes/spk1_nohash_0.wav\nno/spk1_nohash_0.wav\nmaybe/gone.wav\n")
    return root


def test_labels_from_sorted_folders_and_items(speech_commands):
    data = AudioFolder(speech_commands, RATE)
    assert data.classes == ["no", "yes"]  # sorted; "_background_noise_" is not a class
    assert len(data) == 8
    item = data[0]
    assert set(item) == {"audio", "length", "label", "path", "sample_rate"} and item["sample_rate"] == RATE
    assert item["audio"].dtype == torch.float32 and item["audio"].shape == (800,) and item["length"] == 800
    assert data.classes[item["label"]] == "no" and item["path"].endswith("no/spk0_nohash_0.wav")
    assert [data[i]["label"] for i in range(len(data))] == [0] * 4 + [1] * 4


def test_splits_follow_the_lists(speech_commands):
    def names(split):
        return sorted(p.relative_to(speech_commands).as_posix() for p in AudioFolder(speech_commands, RATE, split=split).files)

    assert names("validation") == ["no/spk0_nohash_0.wav", "yes/spk0_nohash_0.wav"]
    assert names("test") == ["no/spk1_nohash_0.wav", "yes/spk1_nohash_0.wav"]  # listed but absent files are skipped
    assert names("train") == [f"{label}/spk{i}_nohash_0.wav" for label in ("no", "yes") for i in (2, 3)]
    assert AudioFolder(speech_commands, RATE, split="train").classes == ["no", "yes"]


def test_without_lists_train_is_everything_and_test_is_an_error(speech_commands):
    (speech_commands / "validation_list.txt").unlink()
    (speech_commands / "testing_list.txt").unlink()
    assert len(AudioFolder(speech_commands, RATE, split="train")) == 8
    with pytest.raises(DataLayoutError, match=r"split='test' needs testing_list\.txt, which is missing"):
        AudioFolder(speech_commands, RATE, split="test")


def test_unknown_split(speech_commands):
    with pytest.raises(ValueError, match="split must be None or one of"):
        AudioFolder(speech_commands, RATE, split="dev")


def test_unlabelled_folder_takes_every_file_at_any_depth(tmp_path):
    write(tmp_path / "music" / "a.wav", 100)
    write(tmp_path / "music" / "deep" / "b.flac", 200)
    data = AudioFolder(tmp_path / "music", RATE, labels=False)
    assert data.classes == [] and len(data) == 2 and "label" not in data[0]


def test_crop_and_pad_to_a_segment(speech_commands):
    data = AudioFolder(speech_commands, RATE, segment_samples=1000)
    short, long_ = data[0], data[3]  # 800 and 1100 samples
    assert short["audio"].shape == long_["audio"].shape == (1000,)
    assert short["length"] == 800 and (short["audio"][800:] == 0).all()
    full = AudioFolder(speech_commands, RATE)[3]["audio"]
    torch.testing.assert_close(long_["audio"], full[:1000])  # deterministic: from the start


def test_random_crop_follows_the_generator(speech_commands):
    def crops(seed):
        data = AudioFolder(speech_commands, RATE, segment_samples=300, random_crop=True,
                           generator=torch.Generator().manual_seed(seed))
        return [data[3]["audio"] for _ in range(5)]

    first, again, other = crops(0), crops(0), crops(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert len({round(c[0].item(), 6) for c in first}) > 1, "crops start at different places"


def test_tokens_come_from_the_tokenizer(speech_commands):
    tokenizer = MuLawTokenizer(8)
    item = AudioFolder(speech_commands, RATE, tokenizer=tokenizer, segment_samples=900)[0]
    assert item["tokens"].dtype == torch.long and item["tokens"].shape == (900,)
    assert torch.equal(item["tokens"], tokenizer.encode(item["audio"]))
    assert (item["tokens"][800:] == tokenizer.silence_token).all()  # the padding is silence


def test_resampling_and_mixing(tmp_path):
    write(tmp_path / "d" / "x" / "8k_stereo.wav", 800, rate=8_000, channels=2)
    with pytest.raises(AudioError, match="2 channels"):
        AudioFolder(tmp_path / "d", RATE)[0]
    item = AudioFolder(tmp_path / "d", RATE, mix_to_mono=True)[0]
    assert item["audio"].shape == (1600,)


@pytest.mark.parametrize("make", ["missing", "empty", "only_text", "loose_files"])
def test_bad_roots_say_which_layout_was_expected(tmp_path, make):
    root = tmp_path / "data"
    if make != "missing":
        root.mkdir()
    if make == "only_text":
        (root / "words").mkdir()
        (root / "words" / "notes.txt").write_text("x")
    if make == "loose_files":
        write(root / "a.wav", 10)
    message = r"root/<label>/\*\.wav.*validation_list\.txt.*testing_list\.txt"
    with pytest.raises(DataLayoutError, match=message) as caught:
        AudioFolder(root, RATE)
    assert str(root) in str(caught.value)
    if make == "loose_files":
        assert "1 audio files lie directly in root" in str(caught.value)


def test_split_lists_matching_no_file(speech_commands):
    (speech_commands / "testing_list.txt").write_text("elsewhere/x.wav\n")
    with pytest.raises(DataLayoutError, match="split='test' holds none of the 8 audio files"):
        AudioFolder(speech_commands, RATE, split="test")


def test_collate_pads_and_masks(speech_commands):
    data = AudioFolder(speech_commands, RATE, tokenizer=MuLawTokenizer(8))
    batch = collate_audio([data[0], data[3], data[1]])  # 800, 1100, 900 samples
    assert batch["audio"].shape == batch["tokens"].shape == batch["mask"].shape == (3, 1100)
    assert batch["lengths"].tolist() == [800, 1100, 900]
    assert batch["mask"].sum(dim=1).tolist() == [800, 1100, 900]
    assert batch["label"].tolist() == [0, 0, 0] and len(batch["path"]) == 3
    assert (batch["audio"][0, 800:] == 0).all() and torch.equal(batch["audio"][1], data[3]["audio"])
    assert batch["tokens"].dtype == torch.long and batch["label"].dtype == torch.long


def test_collate_uses_the_real_length_of_padded_items(speech_commands):
    data = AudioFolder(speech_commands, RATE, segment_samples=1000, labels=False)
    batch = collate_audio([data[0], data[3]])
    assert batch["audio"].shape == (2, 1000) and batch["lengths"].tolist() == [800, 1000]
    assert "label" not in batch and "tokens" not in batch


def test_collate_works_with_a_dataloader(speech_commands):
    loader = torch.utils.data.DataLoader(AudioFolder(speech_commands, RATE), batch_size=3, collate_fn=collate_audio)
    shapes = [batch["audio"].shape for batch in loader]
    assert [s[0] for s in shapes] == [3, 3, 2]


def test_collate_of_nothing():
    with pytest.raises(ValueError, match="empty batch"):
        collate_audio([])
