"""The ``mamba-audio`` command: corpus, train, train-codec, tokenize, evaluate-codec, generate, classify,
evaluate, info, quickstart, serve."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mamba_audio.configs import ConfigError, apply_overrides, from_dict, load_yaml, to_dict

# -- building configs from a preset, a YAML file and overrides -------------------------------------
def build_configs(args, num_classes: int, class_names: list[str]):
    """(model config, TrainConfig) from --preset, then the --config YAML, then flags, then --set overrides."""
    from mamba_audio.models import ClassifierConfig, LMConfig, backbone_preset
    from mamba_audio.training import TrainConfig

    classify = args.task == "classify"
    backbone = backbone_preset(args.preset, bidirectional=classify)
    model_cls = ClassifierConfig if classify else LMConfig
    model = {"backbone": to_dict(backbone)}
    if classify or args.conditional:
        model.update(num_classes=num_classes, class_names=class_names)
    data = _layer_config_sources({"model": model, "train": to_dict(TrainConfig())}, args, ("tokenizer", "sample_rate"))
    return from_dict(model_cls, data["model"], "model"), from_dict(TrainConfig, data["train"], "train")


def build_tts_configs(args):
    """(TTSConfig, TrainConfig) for ``--task tts``: --preset, then the --config YAML, flags and --set
    overrides; the codec layout, voices and symbol table come from the tokenized data at --data (a config
    may repeat them, never change them)."""
    from mamba_audio.data.speech_tokens import speech_model_fields
    from mamba_audio.models import backbone_preset
    from mamba_audio.models.tts import TTSConfig
    from mamba_audio.training import TrainConfig

    data = _layer_config_sources({"model": {"backbone": to_dict(backbone_preset(args.preset))},
                                  "train": to_dict(TrainConfig())}, args)
    fields = speech_model_fields(args.data, data["model"].get("text_front_end", TTSConfig.text_front_end))
    for key, value in fields.items():
        if key in data["model"] and data["model"][key] != value:
            raise ConfigError(f"model.{key} comes from the tokenized data at {args.data} ({value!r}); the config "
                              f"sets {data['model'][key]!r}")
    data["model"].update(fields)
    return from_dict(TTSConfig, data["model"], "model"), from_dict(TrainConfig, data["train"], "train")


TRAIN_FLAGS = (("--steps", int), ("--batch-size", int), ("--grad-accum-steps", int), ("--lr", float),
               ("--ema-decay", float), ("--eval-every", int), ("--save-every", int), ("--seed", int),
               ("--max-minutes", float))


def _layer_config_sources(data: dict, args, model_flags: tuple[str, ...] = ()) -> dict:
    """Onto ``data`` (section name -> dict of defaults), in place: the --config YAML, then the model flags
    and the train flags, then --set overrides. Returns ``data``."""
    if args.config:
        file_data = load_yaml(args.config)
        unknown = set(file_data) - set(data)
        if unknown:
            expected = " and ".join(f"'{name}'" for name in data)
            raise ConfigError(f"{args.config}: unknown section(s) {sorted(unknown)}; expected {expected}")
        for section in data:
            _merge(data[section], file_data.get(section) or {})
    for key in model_flags:
        if getattr(args, key) is not None:
            data["model"][key] = getattr(args, key)
    for key in [flag[2:].replace("-", "_") for flag, _ in TRAIN_FLAGS] + ["device"]:
        if getattr(args, key) is not None:
            data["train"][key] = getattr(args, key)
    apply_overrides(data, args.set or [])
    return data


def _merge(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


TRAIN_DATASETS = ("folder", "sc09", "speech_commands", "youtubemix")


def _open_dataset(args, split: str | None, *, sample_rate: int, labels: bool, segment: int, tokenizer=None,
                  seed: int = 0, train: bool = False):
    """One split of ``--dataset`` at ``--data``; ``train`` draws random crops from ``seed``.

    folder: AudioFolder (labels from sub-folders); sc09 and speech_commands: Speech Commands v0.02
    (its digits, or its 35 words); youtubemix: LongAudioCrops of a folder of long recordings.
    """
    import torch

    from mamba_audio.data import SC09, AudioFolder, LongAudioCrops, SpeechCommands

    options = dict(segment_samples=segment, tokenizer=tokenizer, mix_to_mono=args.mix_to_mono)
    if args.dataset == "youtubemix":
        if labels:
            raise ValueError("--dataset youtubemix has no labels: train an unconditional generator "
                             "(--task lm without --conditional)")
        return LongAudioCrops(args.data, sample_rate=sample_rate, split=split, seed=seed, **options)
    options.update(random_crop=train, generator=torch.Generator().manual_seed(seed) if train else None)
    if args.dataset == "folder":
        return AudioFolder(args.data, sample_rate, split=split, labels=labels, **options)
    speech_commands = SC09 if args.dataset == "sc09" else SpeechCommands
    return speech_commands(args.data, split=split, sample_rate=sample_rate, **options)


def _datasets(args, sample_rate: int, tokenizer, segment: int, labels: bool, seed: int):
    """(train, evaluation or None): the test split when the data has one, else validation, else none.

    Speech Commands and long recordings always have a test split; a folder has one when it
    holds testing_list.txt.
    """
    def split(name, train=False):
        return _open_dataset(args, name, sample_rate=sample_rate, labels=labels, segment=segment,
                             tokenizer=tokenizer, seed=seed, train=train)

    if args.dataset != "folder":
        return split("train", True), split("test")
    root = Path(args.data)
    for name, listing in (("test", "testing_list.txt"), ("validation", "validation_list.txt")):
        if (root / listing).is_file():
            return split("train", True), split(name)
    return split("train", True), None


# -- subcommands -----------------------------------------------------------------------------------
def cmd_train(args) -> dict:
    import torch

    from mamba_audio.data import collate_audio
    from mamba_audio.models import SaShiMiClassifier, SaShiMiLM
    from mamba_audio.tokenizers import build_tokenizer
    from mamba_audio.training import ClassificationTask, LMTask, Trainer

    if args.task == "tts":
        return _train_tts(args)
    if args.segment_seconds is None:
        args.segment_seconds = 1.0
    classify = args.task == "classify"
    probe_rate = args.sample_rate or 16000  # checks the layout and finds the classes before the config exists
    probe = _open_dataset(args, None, sample_rate=probe_rate, labels=classify or args.conditional,
                          segment=max(1, round(args.segment_seconds * probe_rate)))
    class_names = list(getattr(probe, "classes", []) or [])
    model_config, train_config = build_configs(args, len(class_names), class_names)
    tokenizer = build_tokenizer(model_config.tokenizer)
    segment = int(round(args.segment_seconds * model_config.sample_rate))
    train_set, eval_set = _datasets(args, model_config.sample_rate, tokenizer, segment,
                                    classify or args.conditional, train_config.seed)
    torch.manual_seed(train_config.seed)  # the same initial weights on every process
    model = SaShiMiClassifier(model_config) if classify else SaShiMiLM(model_config)
    trainer = Trainer(model, ClassificationTask() if classify else LMTask(), train_config, args.out,
                      progress=not args.quiet, collate_fn=collate_audio)
    if trainer.is_main:
        print(f"{type(model).__name__}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
              f"training {train_config.steps} steps on {args.data} ({trainer.world_size} process(es), "
              f"{trainer.device})")
    metrics = trainer.fit(train_set, eval_set, resume=args.resume, stop_after_minutes=args.stop_after_minutes)
    if not trainer.is_main or trainer.paused:
        return metrics
    print(f"checkpoint: {Path(args.out) / 'checkpoint'}")
    if metrics:
        print("evaluation: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        if "confusion" in metrics:
            print(_confusion_table(metrics["confusion"], model.class_names))
    return metrics


def _train_tts(args) -> dict:
    """Train a TTSModel on the train split of a corpus tokenized by `mamba-audio tokenize` (a sentence
    corpus or the LJSpeech layout), evaluated on its held-out split where it has one. Writes OUT/checkpoint
    and, where the tokenized data holds its codec, OUT/voice (a TextToSpeech checkpoint: tts/ and codec/)."""
    import functools

    import torch

    from mamba_audio.data.speech_tokens import SpeechTokens, collate_speech_tokens
    from mamba_audio.data.tokenized import read_manifest
    from mamba_audio.models.tts import TTSModel
    from mamba_audio.training import Trainer, TTSTask

    given = [flag for flag, value in (("--conditional", args.conditional), ("--tokenizer", args.tokenizer),
                                      ("--sample-rate", args.sample_rate), ("--dataset", args.dataset != "folder"))
             if value]
    if given:
        raise ValueError(f"--task tts takes no {', '.join(given)}: --data is a folder written by `mamba-audio "
                         "tokenize`, which fixes the codec and its rate")
    model_config, train_config = build_tts_configs(args)
    splits = read_manifest(args.data)["splits"]
    torch.manual_seed(train_config.seed)  # the same initial weights on every process
    model = TTSModel(model_config)
    max_frames = None if args.segment_seconds is None else max(1, round(args.segment_seconds * model_config.frame_rate))
    train_set = SpeechTokens(args.data, model.text, model_config.voices, "train", max_frames)
    if model_config.text_guide and model_config.guide_frames_per_symbol is None:
        # the guide's pace in generation: the training clips' frames per symbol, saved with the model
        model_config.guide_frames_per_symbol = round(train_set.frames_per_symbol(), 4)
    held_out = next((name for name in ("test", "heldout", "validation") if name in splits), None)
    eval_set = SpeechTokens(args.data, model.text, model_config.voices, held_out, max_frames) if held_out else None
    trainer = Trainer(model, TTSTask(), train_config, args.out, progress=not args.quiet,
                      collate_fn=functools.partial(collate_speech_tokens, pad_text=model.pad_text))
    if trainer.is_main:
        print(f"TTSModel: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; training "
              f"{train_config.steps} steps on {len(train_set)} clips of {args.data}, {len(model_config.voices)} "
              f"voice(s) ({trainer.world_size} process(es), {trainer.device})")
    metrics = trainer.fit(train_set, eval_set, resume=args.resume, stop_after_minutes=args.stop_after_minutes)
    if not trainer.is_main or trainer.paused:
        return metrics
    print(f"checkpoint: {Path(args.out) / 'checkpoint'}")
    if (Path(args.data) / "codec").is_dir():
        from mamba_audio.tts import TextToSpeech

        voice = TextToSpeech(TTSModel.from_pretrained(Path(args.out) / "checkpoint", device="cpu"),
                             train_set.tokens.codec())
        print(f"voice: {voice.save_pretrained(Path(args.out) / 'voice')}")
    if metrics:
        print(f"held-out ({held_out}): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return metrics


def cmd_train_codec(args) -> dict:
    """Train a ConvCodec on a folder of audio: reconstruction through the quantiser, scored by the
    multi-resolution STFT distance on the corpus's held-out split (``--kind spectral``: fit a SpectralCodec)."""
    if args.kind == "spectral":
        return _fit_spectral_codec(args)
    if args.codebooks_from:
        raise ValueError("--codebooks-from keeps a SpectralCodec's codebooks: it goes with --kind spectral")
    import torch
    from torch.utils.data import Subset

    from mamba_audio.codecs import ConvCodec, ConvCodecConfig
    from mamba_audio.data import collate_audio
    from mamba_audio.data.tokenized import audio_splits
    from mamba_audio.training import CodecLossConfig, CodecTask, TrainConfig, Trainer

    defaults = {"model": to_dict(ConvCodecConfig()), "train": to_dict(TrainConfig(lr=1e-3, warmup_steps=200)),
                "loss": to_dict(CodecLossConfig())}
    data = _layer_config_sources(defaults, args, ("sample_rate",))
    model_config = from_dict(ConvCodecConfig, data["model"], "model")
    train_config = from_dict(TrainConfig, data["train"], "train")
    loss_config = from_dict(CodecLossConfig, data["loss"], "loss")
    segment = int(round(args.segment_seconds * model_config.sample_rate))
    options = dict(segment_samples=segment, mix_to_mono=args.mix_to_mono)
    train_set = audio_splits(args.data, model_config.sample_rate, **options,
                             train_generator=torch.Generator().manual_seed(train_config.seed))["train"]
    held_out = [s for name, s in audio_splits(args.data, model_config.sample_rate, **options).items()
                if name != "train"]
    if held_out:
        eval_set = held_out[-1]  # test, else heldout or validation
    else:  # no held-out split in the corpus: every twentieth clip is held out
        eval_set = Subset(audio_splits(args.data, model_config.sample_rate, **options)["train"],
                          range(0, len(train_set), 20))
        train_set = Subset(train_set, [i for i in range(len(train_set)) if i % 20])
    torch.backends.cudnn.benchmark = True  # fixed crop length: let cuDNN pick its fastest convolutions once
    torch.manual_seed(train_config.seed)
    model = ConvCodec(model_config)
    trainer = Trainer(model, CodecTask(loss_config), train_config, args.out, progress=not args.quiet,
                      collate_fn=collate_audio)
    if trainer.is_main:
        print(f"{model!r}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; training "
              f"{train_config.steps} steps on {len(train_set)} clips of {args.data}, evaluating on {len(eval_set)} "
              f"({trainer.world_size} process(es), {trainer.device})")
    metrics = trainer.fit(train_set, eval_set, resume=args.resume, stop_after_minutes=args.stop_after_minutes)
    if trainer.is_main and not trainer.paused:
        print(f"checkpoint: {Path(args.out) / 'checkpoint'}")
        if metrics:
            print(f"held-out mrstft distance: {metrics['mrstft_distance']:.4f}")
    return metrics


def _fit_spectral_codec(args) -> dict:
    """Fit a SpectralCodec on the CPU to the corpus's train split: its codebooks by k-means (whole clips), or, with
    ``--codebooks-from``, keep a fitted codec's codebooks (its tokens stay valid); then, with model.inverse_layers
    > 0, train its learned mel inverse. Write OUT/checkpoint and OUT/fit.json (the errors left per codebook, the
    inverse's loss, the held-out mrstft distance)."""
    import torch

    from mamba_audio.codecs import SpectralCodec, SpectralCodecConfig, SpectralFitConfig
    from mamba_audio.codecs.spectral import ANALYSIS_FIELDS
    from mamba_audio.data.tokenized import audio_splits
    from mamba_audio.metrics import codec_round_trip
    from mamba_audio.models import load_pretrained

    given = [flag for flag, _ in TRAIN_FLAGS if getattr(args, flag[2:].replace("-", "_")) is not None]
    given += [flag for flag, value in (("--device", args.device), ("--resume", args.resume),
                                       ("--stop-after-minutes", args.stop_after_minutes)) if value]
    if given:
        raise ValueError(f"--kind spectral takes no {', '.join(given)}: it is fitted on the CPU "
                         "(set the fit section's keys instead, e.g. fit.iterations or fit.inverse_steps)")
    source = None
    if args.codebooks_from:
        source = load_pretrained(args.codebooks_from)
        if not isinstance(source, SpectralCodec) or not source.fitted:
            raise ValueError(f"--codebooks-from {args.codebooks_from}: not a fitted SpectralCodec checkpoint")
    data = {"model": to_dict(source.config if source else SpectralCodecConfig()), "fit": to_dict(SpectralFitConfig())}
    if args.config:
        file_data = load_yaml(args.config)
        unknown = set(file_data) - set(data)
        if unknown:
            raise ConfigError(f"{args.config}: unknown section(s) {sorted(unknown)}; expected 'model' and 'fit'")
        for section in data:
            _merge(data[section], file_data.get(section) or {})
    if args.sample_rate is not None:
        data["model"]["sample_rate"] = args.sample_rate
    apply_overrides(data, args.set or [])
    model_config = from_dict(SpectralCodecConfig, data["model"], "model")
    fit_config = from_dict(SpectralFitConfig, data["fit"], "fit")
    torch.manual_seed(fit_config.seed)  # the learned inverse's initial weights
    codec = SpectralCodec(model_config)
    if source is not None:  # the analysis and the codebooks must be the source's, or its tokens mean other sounds
        changed = [name for name in ANALYSIS_FIELDS if getattr(model_config, name) != getattr(source.config, name)]
        if changed:
            name = changed[0]
            raise ValueError(f"--codebooks-from keeps {args.codebooks_from}'s codebooks, so model.{name} must stay "
                             f"{getattr(source.config, name)!r} (got {getattr(model_config, name)!r}); only the "
                             "synthesis settings (griffin_lim_*, synthesis_oversampling, inverse_*) can change")
        codec.quantizer.load_state_dict(source.quantizer.state_dict())
    splits = audio_splits(args.data, model_config.sample_rate, mix_to_mono=args.mix_to_mono)
    train_set = splits["train"]
    summary, started = {"clips": len(train_set), "config": data}, time.time()
    if source is None:
        print(f"{codec!r}: fitting {model_config.num_codebooks} codebooks by k-means to the frames of "
              f"{len(train_set)} clips of {args.data}")
        errors = codec.fit((train_set[i]["audio"] for i in range(len(train_set))), fit_config)
        summary.update(fit_seconds=round(time.time() - started, 1),
                       error_after_each_codebook=[round(e, 4) for e in errors])
        print(f"fitted in {summary['fit_seconds']} s; squared error left after each codebook: "
              f"{', '.join(f'{e:.2f}' for e in errors)}")
    else:
        summary["codebooks_from"] = str(args.codebooks_from)
    if codec.inverse is not None:
        generator = torch.Generator().manual_seed(fit_config.seed)
        chosen = torch.randperm(len(train_set), generator=generator)[:fit_config.inverse_clips].tolist()
        print(f"training the mel inverse ({sum(p.numel() for p in codec.inverse.parameters()) / 1e6:.2f}M "
              f"parameters): {fit_config.inverse_steps} steps on {len(chosen)} clips")
        started = time.time()
        losses = codec.fit_inverse([train_set[i]["audio"] for i in chosen], fit_config, progress=not args.quiet)
        summary.update(inverse_seconds=round(time.time() - started, 1), inverse_clips=len(chosen),
                       inverse_loss_by_tenth=[round(loss, 4) for loss in losses])
        print(f"mel inverse trained in {summary['inverse_seconds']} s; L1 of log magnitudes "
              f"{losses[0]:.4f} -> {losses[-1]:.4f}")
    held_out = next((splits[name] for name in ("test", "heldout", "validation") if name in splits), None)
    if held_out is not None:
        scores = codec_round_trip(codec, (held_out[i]["audio"] for i in range(min(len(held_out), 60))))
        summary.update(heldout_mrstft_distance=round(scores["mrstft_distance"], 4),
                       heldout_realtime_factor=round(scores["realtime_factor"], 4))
    out = Path(args.out)
    codec.save_pretrained(out / "checkpoint")
    (out / "fit.json").write_text(json.dumps(summary, indent=2) + "\n")
    if held_out is not None:
        print(f"held-out mrstft distance: {summary['heldout_mrstft_distance']:.4f}")
    print(f"checkpoint: {out / 'checkpoint'}")
    return summary


def cmd_tokenize(args) -> Path:
    """Encode every split of a corpus with a codec into a tokenized dataset folder."""
    from mamba_audio.codecs import load_codec
    from mamba_audio.data.tokenized import audio_splits, tokenize_splits
    from mamba_audio.training import resolve_device

    codec = load_codec(args.codec, device=resolve_device(args.device), sample_rate=args.sample_rate)
    splits = audio_splits(args.data, codec.sample_rate, mix_to_mono=args.mix_to_mono, max_seconds=args.max_seconds)
    out = tokenize_splits(codec, splits, args.out, source=args.data, codec_spec=args.codec, progress=not args.quiet)
    print(f"tokenized {', '.join(f'{name} ({len(s)} clips)' for name, s in splits.items())} with {codec!r}: {out}")
    return out


def cmd_evaluate_codec(args) -> dict:
    """Codecs' reconstruction of a corpus's held-out clips, side by side: mrstft distance and speed."""
    import platform

    import torch

    from mamba_audio.codecs import load_codec
    from mamba_audio.data.tokenized import audio_splits
    from mamba_audio.metrics import codec_round_trip
    from mamba_audio.training import resolve_device

    device = resolve_device(args.device)
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
               f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
               "command": " ".join(["mamba-audio evaluate-codec", *(f"--codec {c}" for c in args.codec),
                                    f"--data {args.data}", f"--max-clips {args.max_clips}", f"--device {args.device}",
                                    *([f"--split {args.split}"] if args.split else [])]),
               "data": str(args.data), "codecs": {}}
    for spec in args.codec:
        codec = load_codec(spec, device=device, sample_rate=args.sample_rate)
        splits = audio_splits(args.data, codec.sample_rate, mix_to_mono=args.mix_to_mono)
        split = args.split or next((s for s in ("test", "heldout", "validation") if s in splits), "train")
        if split not in splits:
            raise ValueError(f"{args.data} has no split {split!r}; it has {sorted(splits)}")
        dataset = splits[split]
        count = len(dataset) if args.max_clips is None else min(args.max_clips, len(dataset))
        scores = codec_round_trip(codec, (dataset[i]["audio"] for i in range(count)))
        results["split"] = split
        results["codecs"][spec] = {"codec": repr(codec), **scores}
        print(f"{spec}: mrstft distance {scores['mrstft_distance']:.4f} on {scores['clips']} {split} clips; "
              f"round trip {scores['realtime_factor']:.4f}x real time on {results['device']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


def _confusion_table(confusion: list[list[int]], names: list[str]) -> str:
    """Rows: true class; columns: predicted class."""
    width = max(5, *(len(n) for n in names))
    lines = ["confusion (rows: true, columns: predicted)", " " * width + " " + " ".join(f"{n[:5]:>5}" for n in names)]
    for name, row in zip(names, confusion):
        lines.append(f"{name:>{width}} " + " ".join(f"{count:>5}" for count in row))
    return "\n".join(lines)


def cmd_generate(args) -> list[Path]:
    import torch

    from mamba_audio.audio import load_audio, save_audio
    from mamba_audio.models import SaShiMiLM
    from mamba_audio.streaming import generate_batch
    from mamba_audio.training import resolve_device

    model = SaShiMiLM.from_pretrained(args.checkpoint, device=resolve_device(args.device)).eval()
    config = model.config
    labels = None
    out = Path(args.out)
    if args.per_class is not None:  # every class at once, in one batch: OUT/<class>/<i>.wav
        if not config.num_classes:
            raise ValueError("--per-class needs a class-conditional model; this one is unconditional")
        if args.class_name is not None or args.prompt or args.per_class < 1:
            raise ValueError("--per-class N (N >= 1) generates every class; it takes no --class-name or --prompt")
        labels = torch.arange(config.num_classes).repeat_interleave(args.per_class)
        args.num = len(labels)
        paths = [out / config.class_names[c] / f"{i % args.per_class}.wav" for i, c in enumerate(labels.tolist())]
    elif args.class_name is not None:
        if args.class_name not in config.class_names:
            raise ValueError(f"unknown class {args.class_name!r}; this model knows {config.class_names}")
        labels = torch.full((args.num,), config.class_names.index(args.class_name))
    elif config.num_classes:
        raise ValueError(f"this model is class-conditional: pass --class-name, one of {config.class_names}, "
                         "or --per-class N")
    prompt = None
    if args.prompt:
        wav = load_audio(args.prompt, config.sample_rate, mix_to_mono=args.mix_to_mono,
                         max_seconds=args.max_prompt_seconds)
        prompt = model.tokenizer.encode(wav)[None].expand(args.num, -1)
    # the streaming loop: generate's tokens, with every pooling period one CUDA graph on a GPU
    tokens = generate_batch(model, int(args.seconds * config.sample_rate), args.num, prompt=prompt, labels=labels,
                            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                            progress=not args.quiet)
    if prompt is not None:
        tokens = torch.cat([prompt.cpu(), tokens], dim=1)
    if args.per_class is None:
        paths = [out] if args.num == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(args.num)]
    for path, row in zip(paths, tokens.cpu()):
        save_audio(path, model.tokenizer.decode(row), config.sample_rate)
        if len(paths) <= 10:
            print(f"wrote {path}")
    if len(paths) > 10:
        print(f"wrote {len(paths)} files under {out}")
    return paths


def cmd_classify(args) -> list[dict]:
    import torch

    from mamba_audio.audio import load_audio
    from mamba_audio.models import SaShiMiClassifier
    from mamba_audio.training import resolve_device

    model = SaShiMiClassifier.from_pretrained(args.checkpoint, device=resolve_device(args.device)).eval()
    device = model.head.weight.device
    results = []
    for path in args.files:
        wav = load_audio(path, model.config.sample_rate, mix_to_mono=args.mix_to_mono, max_seconds=args.max_seconds)
        with torch.no_grad():
            probs = model(model.tokenizer.encode(wav)[None].to(device)).softmax(-1)[0].cpu()
        top = probs.topk(min(args.top, len(probs)))
        ranked = [(model.class_names[i], float(p)) for p, i in zip(top.values, top.indices)]
        results.append({"file": str(path), "top": ranked})
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in ranked))
    return results


def cmd_info(args) -> dict:
    from mamba_audio.models import BACKBONE_PRESETS, SaShiMi, load_pretrained

    if Path(args.target).is_dir():
        model = load_pretrained(args.target)
        info = {"checkpoint": args.target, "model_type": model.model_type, "config": to_dict(model.config)}
    elif args.target in BACKBONE_PRESETS:
        model = SaShiMi(BACKBONE_PRESETS[args.target])
        info = {"preset": args.target, "backbone": to_dict(model.config)}
    else:
        raise ValueError(f"{args.target!r} is neither a checkpoint directory nor a preset ({sorted(BACKBONE_PRESETS)})")
    info["parameters"] = sum(p.numel() for p in model.parameters())
    print(json.dumps(info, indent=2))
    return info


def cmd_evaluate(args) -> dict:
    """FID, IS, mIS and AM of a folder of generated clips against real ones, by a trained classifier."""
    import torch

    from mamba_audio.data import AudioFolder, collate_audio
    from mamba_audio.metrics import generation_scores
    from mamba_audio.models import SaShiMiClassifier
    from mamba_audio.training import resolve_device

    classifier = SaShiMiClassifier.from_pretrained(args.classifier, device=resolve_device(args.device))
    rate = classifier.config.sample_rate
    segment = int(round(args.seconds * rate))

    def clips(root, split):
        dataset = AudioFolder(root, rate, split=split, labels=False, segment_samples=segment,
                              tokenizer=classifier.tokenizer, mix_to_mono=True)
        count = len(dataset) if args.max_files is None else min(args.max_files, len(dataset))
        batch = collate_audio([dataset[i] for i in range(count)])
        return batch["tokens"], batch["lengths"]

    real_split = "test" if (Path(args.real) / "testing_list.txt").is_file() else None
    generated, generated_lengths = clips(args.generated, None)
    real, real_lengths = clips(args.real, real_split)
    with torch.no_grad():
        scores = generation_scores(classifier, generated, real, generated_lengths, real_lengths)
    scores.update(classifier=str(args.classifier), generated=str(args.generated), real=str(args.real),
                  real_split=real_split or "all")
    print(json.dumps(scores, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(scores, indent=2) + "\n")
    return scores


def cmd_corpus(args) -> Path:
    from mamba_audio.data import DIGITS, SPEECH_COMMANDS_WORDS, build_piano_corpus, build_spoken_digits

    if args.kind == "piano":
        works = tuple(w.strip() for w in args.works.split(",")) if args.works else None
        root = build_piano_corpus(args.out, pieces=args.pieces, seed=args.seed, works=works,
                                  sample_rate=args.sample_rate, max_seconds=args.max_seconds,
                                  overwrite=args.overwrite, progress=not args.quiet)
        print(f"corpus: {root}")
        return root
    named = {"digits": DIGITS, "speech-commands": SPEECH_COMMANDS_WORDS}
    words = named.get(args.words) or tuple(w.strip() for w in args.words.split(","))
    root = build_spoken_digits(args.out, words=words, per_word=args.per_word, sample_rate=args.sample_rate,
                               seconds=args.seconds, seed=args.seed, snr_db=(args.snr_low, args.snr_high),
                               synthesizers=tuple(s.strip() for s in args.synthesizers.split(",")),
                               workers=args.workers, overwrite=args.overwrite, progress=not args.quiet)
    print(f"corpus: {root}")
    return root


def cmd_quickstart(args) -> dict:
    """The main job: build a spoken-digit corpus, train a tiny SaShiMi-Mamba, report NLL, write a sample."""
    from mamba_audio.data import DIGITS, build_spoken_digits

    out = Path(args.out)
    started = time.time()
    # Quiet backgrounds (50-60 dB SNR): white noise is incompressible, and in 8-bit mu-law even
    # faint noise costs bits, so a noisier corpus would hide what the model learned.
    corpus = build_spoken_digits(out / "corpus", words=DIGITS, per_word=args.clips_per_word,
                                 sample_rate=args.sample_rate, seconds=1.0, seed=args.seed, snr_db=(50.0, 60.0),
                                 overwrite=True, progress=not args.quiet)
    print(f"corpus: {corpus} ({time.time() - started:.0f} s)")
    # the train and generate commands as a user would type them, so their defaults stay theirs
    quiet = ["--quiet"] if args.quiet else []
    train_args = build_parser().parse_args([
        *quiet, "train", "--task", "lm", "--data", str(corpus), "--out", str(out / "lm"), "--preset", "tiny",
        "--tokenizer", "mulaw8", "--sample-rate", str(args.sample_rate), "--segment-seconds", str(args.segment_seconds),
        "--set", "model.backbone.n_layers=1", "--set", f"train.warmup_steps={max(1, args.steps // 10)}",
        "--steps", str(args.steps), "--batch-size", "8", "--lr", "3e-3", "--eval-every", str(args.steps),
        "--save-every", str(args.steps), "--seed", str(args.seed), "--device", "cpu",
    ])
    metrics = cmd_train(train_args)
    gen_args = build_parser().parse_args([
        *quiet, "generate", str(out / "lm" / "checkpoint"), "--out", str(out / "generated.wav"),
        "--seconds", str(args.generate_seconds), "--seed", str(args.seed), "--device", "cpu",
    ])
    wav_path = cmd_generate(gen_args)[0]
    summary = {"test_nll_bits_per_sample": metrics.get("nll_bits"), "generated_wav": str(wav_path.resolve()),
               "checkpoint": str((out / "lm" / "checkpoint").resolve()), "seconds": round(time.time() - started)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\ntest NLL: {summary['test_nll_bits_per_sample']:.3f} bits per sample "
          f"(8-bit mu-law; 8.0 is a uniform guess)")
    print(f"generated audio: {summary['generated_wav']}")
    print(f"finished in {summary['seconds']} s")
    return summary

def cmd_serve(args) -> None:
    """The streaming API server: checkpoints from --model (default: those `make run` and the spoken_digits
    recipe write) and a text-to-speech voice (default: the packaged one), on --device, until interrupted."""
    import mamba_audio
    from mamba_audio.models import CheckpointError, default_checkpoints
    from mamba_audio.serve import ServeConfig, create_app, load_models, make_server, serve_models
    from mamba_audio.training import resolve_device

    specs = args.model or default_checkpoints()
    config = ServeConfig(max_streams=args.max_streams, max_seconds=args.max_seconds,
                         max_upload_bytes=int(args.max_upload_mb * 2**20), request_timeout_s=args.timeout,
                         shutdown_grace_s=args.shutdown_grace)
    device = resolve_device(args.device)
    models = load_models(specs, device)
    if not args.no_voice:
        try:
            models.setdefault("tts", mamba_audio.TextToSpeech.from_pretrained(args.voice, device=device,
                                                                             max_streams=config.max_streams))
        except CheckpointError as err:
            if args.voice:
                raise
            print(f"speech: {err}; serving without a voice (/v1/audio/speech answers 404)", file=sys.stderr)
    if not models:
        raise ValueError("nothing to serve: pass --model [ID=]DIR (repeatable) or --voice DIR, or run `make run` "
                         "first for the default checkpoints")
    app = create_app(serve_models(models, config.max_streams), config)
    print(f"serving {', '.join(models)} on http://{args.host}:{args.port} (docs at /docs)")
    try:
        make_server(app, args.host, args.port, log_level="warning" if args.quiet else "info").run()
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it shut down for; the shutdown is done
        pass


# -- argument parsing ------------------------------------------------------------------------------
def add_trainer_options(p: argparse.ArgumentParser) -> None:
    """The options every training command shares: TRAIN_FLAGS (over the config file), resume, device, mono."""
    for flag, typ in TRAIN_FLAGS:
        p.add_argument(flag, type=typ)
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/trainer_state if present")
    p.add_argument("--stop-after-minutes", type=float,
                   help="pause this run after N minutes, saving OUT/trainer_state (--resume goes on with it)")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--mix-to-mono", action="store_true", help="average multichannel files instead of refusing them")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mamba-audio", description="Mamba (selective SSM) models for audio.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("corpus", help="build an offline corpus: spoken words (espeak-ng, flite) or piano (fluidsynth)")
    p.add_argument("kind", choices=["spoken-digits", "piano"],
                   help="spoken-digits: Speech Commands layout; piano: long recordings (a YouTubeMix stand-in)")
    p.add_argument("--out", required=True, help="corpus folder")
    p.add_argument("--pieces", type=int, default=40, help="piano: pieces drawn from music21's keyboard scores")
    p.add_argument("--works", help="piano: comma-separated music21 corpus names instead, e.g. bach/bwv66.6")
    p.add_argument("--max-seconds", type=float, help="piano: cut every piece at this length")
    p.add_argument("--words", default="digits",
                   help="comma-separated words to speak, or 'digits' (default) or 'speech-commands' (its 35 words)")
    p.add_argument("--synthesizers", default="espeak-ng,flite", help="comma-separated: espeak-ng, flite")
    p.add_argument("--per-word", type=int, default=30, help="clips per word")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--seconds", type=float, default=1.0, help="length of every clip")
    p.add_argument("--snr-low", type=float, default=20.0, help="lowest speech-to-noise ratio, dB")
    p.add_argument("--snr-high", type=float, default=40.0, help="highest speech-to-noise ratio, dB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="synthesizer processes at once")
    p.add_argument("--overwrite", action="store_true", help="rebuild a corpus made with other arguments")
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser("train", help="train a generator (lm) or a classifier on a folder of audio, or "
                                     "text-to-speech (tts) on a tokenized speech corpus")
    p.add_argument("--task", choices=["lm", "classify", "tts"], default="lm")
    p.add_argument("--dataset", choices=TRAIN_DATASETS, default="folder",
                   help="layout of --data: folder (labels from sub-folders, optional split lists), sc09 and "
                        "speech_commands (Speech Commands v0.02: its digits or its 35 words), youtubemix "
                        "(long recordings, random crops of --segment-seconds)")
    p.add_argument("--data", required=True,
                   help="the dataset's root folder (tts: a folder written by `mamba-audio tokenize`)")
    p.add_argument("--out", required=True, help="output folder: checkpoint/, metrics.jsonl (tts: also voice/)")
    p.add_argument("--preset", default="tiny", help="backbone preset: tiny, sc09-6m, sc09-24m")
    p.add_argument("--tokenizer", help="mulaw8 (default) or linear8")
    p.add_argument("--sample-rate", type=int, help="Hz (default 16000); files at other rates are resampled")
    p.add_argument("--segment-seconds", type=float,
                   help="crop or pad every clip to this length, default 1 (youtubemix: the length of every crop; "
                        "tts: crop longer clips to their start, default whole clips)")
    p.add_argument("--conditional", action="store_true", help="class-conditional generator (labels from folders)")
    p.add_argument("--config", help="YAML file with 'model' and 'train' sections")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. train.lr=1e-3")
    add_trainer_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-codec", help="train our own neural codec (ConvCodec) or fit a SpectralCodec on a "
                                           "folder of audio")
    p.add_argument("--kind", choices=["conv", "spectral"], default="conv",
                   help="conv: train a ConvCodec (GPU, minutes to hours); spectral: fit a SpectralCodec's codebooks "
                        "by k-means on the CPU (whole clips; config sections 'model' and 'fit')")
    p.add_argument("--data", required=True,
                   help="corpus folder: any folder of audio, the Speech Commands or the LJSpeech layout")
    p.add_argument("--out", required=True, help="output folder: checkpoint/ (the codec), metrics.jsonl")
    p.add_argument("--sample-rate", type=int, help="Hz (default 16000); files at other rates are resampled")
    p.add_argument("--segment-seconds", type=float, default=1.0, help="random crops of this length for training")
    p.add_argument("--codebooks-from", metavar="DIR",
                   help="spectral: keep this fitted SpectralCodec's codebooks (tokens made with it stay valid) and "
                        "fit only its synthesis, e.g. --set model.inverse_layers=5 for a learned mel inverse")
    p.add_argument("--config", help="YAML file with 'model', 'train' and 'loss' sections")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. model.num_codebooks=8")
    add_trainer_options(p)
    p.set_defaults(func=cmd_train_codec)

    p = sub.add_parser("tokenize", help="encode a corpus with a codec once, so token models train without it")
    p.add_argument("--codec", required=True, help="a ConvCodec checkpoint directory, mulaw8, encodec:DIR, dac:DIR "
                                                  "or snac:DIR")
    p.add_argument("--data", required=True, help="corpus folder (its splits are kept)")
    p.add_argument("--out", required=True, help="output folder: manifest.json, <split>.safetensors, <split>.jsonl")
    p.add_argument("--sample-rate", type=int, default=16000, help="mu-law's rate (the other codecs have their own)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="refuse longer files")
    p.add_argument("--device", default="auto")
    p.add_argument("--mix-to-mono", action="store_true")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("evaluate-codec", help="multi-resolution STFT distance of codec round trips on held-out clips")
    p.add_argument("--codec", action="append", required=True,
                   help="repeatable: a ConvCodec checkpoint directory, mulaw8, encodec:DIR, dac:DIR or snac:DIR")
    p.add_argument("--data", required=True, help="corpus folder")
    p.add_argument("--split", help="default: the corpus's held-out split (test, heldout or validation), else train")
    p.add_argument("--max-clips", type=int, default=200, help="score at most this many clips of the split")
    p.add_argument("--sample-rate", type=int, default=16000, help="mu-law's rate (the other codecs have their own)")
    p.add_argument("--out", help="also write the scores to this JSON file")
    p.add_argument("--device", default="auto")
    p.add_argument("--mix-to-mono", action="store_true")
    p.set_defaults(func=cmd_evaluate_codec)

    p = sub.add_parser("generate", help="sample audio from a trained generator")
    p.add_argument("checkpoint")
    p.add_argument("--out", default="generated.wav")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--num", type=int, default=1)
    p.add_argument("--class-name", help="class to generate (class-conditional models)")
    p.add_argument("--per-class", type=int, metavar="N",
                   help="N clips of every class in one batch, written to OUT/<class>/<i>.wav (OUT a folder)")
    p.add_argument("--prompt", help="audio file to continue")
    p.add_argument("--max-prompt-seconds", type=float, default=30.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--mix-to-mono", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("classify", help="label audio files with a trained classifier")
    p.add_argument("checkpoint")
    p.add_argument("files", nargs="+")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=600.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--mix-to-mono", action="store_true")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("evaluate", help="FID, IS, mIS and AM of generated clips, judged by a trained classifier")
    p.add_argument("classifier", help="classifier checkpoint (e.g. from the speech_commands recipe)")
    p.add_argument("--generated", required=True, help="folder of generated audio (searched recursively)")
    p.add_argument("--real", required=True, help="real audio: its test split when it has testing_list.txt")
    p.add_argument("--seconds", type=float, default=1.0, help="clips are cropped or padded to this length")
    p.add_argument("--max-files", type=int, help="use at most this many files of each folder")
    p.add_argument("--out", help="also write the scores to this JSON file")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("info", help="describe a checkpoint directory or a preset")
    p.add_argument("target")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("quickstart", help="offline demo: corpus, training, test NLL, a generated wav")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--clips-per-word", type=int, default=30)
    p.add_argument("--sample-rate", type=int, default=8000)
    p.add_argument("--segment-seconds", type=float, default=0.25)
    p.add_argument("--generate-seconds", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("serve", help="HTTP/WebSocket API streaming generated audio (needs the serve extra)")
    p.add_argument("--model", action="append", default=[], metavar="[ID=]DIR",
                   help="checkpoint to serve (repeatable); default: the checkpoints `make run` writes")
    p.add_argument("--voice", help="text-to-speech checkpoint for /v1/audio/speech (default: the packaged voice)")
    p.add_argument("--no-voice", action="store_true", help="serve no text-to-speech voice")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--max-streams", type=int, default=8, help="concurrent audio streams; 429 beyond")
    p.add_argument("--max-seconds", type=float, default=30.0, help="longest audio one request may ask for")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body; 413 beyond")
    p.add_argument("--timeout", type=float, default=300.0, help="wall-clock seconds one stream may run")
    p.add_argument("--shutdown-grace", type=float, default=10.0,
                   help="seconds open streams get to finish on shutdown before they are ended")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:  # ours: ConfigError, CheckpointError, AudioError
        print(f"mamba-audio {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
