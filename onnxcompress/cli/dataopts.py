"""Data-source options shared by every command that takes data: images, text, audio (onnxcompress/sources).

The flags build a config.DataConfig (on top of --data-config FILE.json); commands open the data with
`open_data`, which loads and checks it against the model before any work starts."""
from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Optional

import click

from ..config import DataConfig, PipelineConfig, from_dict, read_json_object
from ..errors import ConfigError, OnnxCompressError
from ..sources.preprocess import PRESETS

_FLOATS_HELP = "comma-separated, one value or one per channel"


def _floats(text: Optional[str], flag: str) -> Optional[tuple[float, ...]]:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{flag} '{text}' is not a comma-separated list of numbers, e.g. 0.485,0.456,0.406") from None


def _size(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.lower().replace("x", ",").split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--image-size '{text}' is not HxW or one integer, e.g. 224x224 or 256") from None


OPTIONS = [
    click.option("--data-config", "data_config_file", type=click.Path(),
                 help="DataConfig JSON (a pipeline config's 'data' section, or a whole pipeline config): kind, "
                      "image/text/audio settings; the flags below override it."),
    click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
                 help="Image preprocessing preset (default unit). " + "; ".join(f"{k}: {v[0]}" for k, v in PRESETS.items())),
    click.option("--image-size", default=None, metavar="HxW", help="Resize target (shorter side for imagenet-style presets)."),
    click.option("--mean", default=None, metavar="M[,M,M]", help=f"Image mean after scaling ({_FLOATS_HELP})."),
    click.option("--std", default=None, metavar="S[,S,S]", help=f"Image std after scaling ({_FLOATS_HELP})."),
    click.option("--gray-to-rgb", is_flag=True, default=None, help="Replicate grayscale images to 3 channels (else an error)."),
    click.option("--labels-csv", type=click.Path(), default=None, help="Image labels from a CSV file,label (default: subfolder names)."),
    click.option("--tokenizer", type=click.Path(), default=None, help="Text data: the model's tokenizer.json."),
    click.option("--text-column", default=None, help="Text data: .jsonl key / .csv column of the text [text]."),
    click.option("--label-column", default=None, help="Text data: .jsonl key / .csv column of an integer label."),
    click.option("--max-length", type=int, default=None, help="Text data: truncate to this length (default: the model's static length, padded to it; else 128, each batch padded to its longest)."),
    click.option("--sample-rate", type=int, default=None, help="Audio data: resample WAV files to this rate [16000]."),
    click.option("--mix-to-mono", is_flag=True, default=None, help="Audio data: average the channels of multi-channel WAVs."),
    click.option("--seed", type=int, default=None,
                 help="Order of streamed samples (images, text, audio): a permutation with this seed [0], so the "
                      "first N (--samples) are a reproducible random subset; -1 = file order."),
    click.option("--skip-bad", is_flag=True, default=None, help="Leave unreadable image/WAV files out (counted) instead of stopping."),
    click.option("--memory-budget", default=None, metavar="SIZE",
                 help="Memory for the intermediate tensors that calibration, per-layer comparisons and reconstruction "
                      "read (e.g. 512M, 2G): runs and passes over the data are sized to it [min(2G, half the free RAM)]."),
]
NAMES = ("data_config_file", "preset", "image_size", "mean", "std", "gray_to_rgb", "labels_csv", "tokenizer", "text_column",
         "label_column", "max_length", "sample_rate", "mix_to_mono", "seed", "skip_bad", "memory_budget")


def build_data_config(base: Optional[DataConfig] = None, **kw) -> DataConfig:
    """Flags (None = not given) over --data-config over `base`."""
    cfg = base or DataConfig()
    if kw.get("data_config_file"):
        raw = read_json_object(kw["data_config_file"], "data config", "pass a JSON file with the data settings")
        cfg = from_dict(PipelineConfig, raw).data if "version" in raw else from_dict(DataConfig, raw, prefix="data.")
    image = {k: v for k, v in {"preset": kw.get("preset"), "size": _size(kw.get("image_size")),
                               "mean": _floats(kw.get("mean"), "--mean"), "std": _floats(kw.get("std"), "--std"),
                               "gray_to_rgb": kw.get("gray_to_rgb"), "labels_csv": kw.get("labels_csv")}.items() if v is not None}
    text = {k: v for k, v in {"tokenizer": kw.get("tokenizer"), "column": kw.get("text_column"),
                              "label_column": kw.get("label_column"), "max_length": kw.get("max_length")}.items() if v is not None}
    audio = {k: v for k, v in {"sample_rate": kw.get("sample_rate"), "mix_to_mono": kw.get("mix_to_mono")}.items() if v is not None}
    top = {k: v for k, v in {"skip_bad": kw.get("skip_bad"), "memory_budget": kw.get("memory_budget")}.items() if v is not None}
    if "memory_budget" in top:
        from ..runtime.budget import parse_budget

        parse_budget(top["memory_budget"])  # the flag's own name in the error
    if kw.get("seed") is not None:
        top["seed"] = None if kw["seed"] < 0 else kw["seed"]
    cfg = dataclasses.replace(cfg, image=dataclasses.replace(cfg.image, **image), text=dataclasses.replace(cfg.text, **text),
                              audio=dataclasses.replace(cfg.audio, **audio), **top)
    cfg.validate()
    return cfg


def data_options(fn):
    """Adds the data flags; the command receives them as one `data_flags` dict (build_data_config(**data_flags))."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        kwargs["data_flags"] = {k: kwargs.pop(k, None) for k in NAMES}
        try:  # flag syntax is checked before the command runs: one line, exit 2
            build_data_config(**kwargs["data_flags"])
        except OnnxCompressError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        return fn(*args, **kwargs)

    for opt in reversed(OPTIONS):
        wrapper = opt(wrapper)
    return wrapper


def open_data(path, layout, config: DataConfig, model=None, say=None):
    """Load and check data against the model's layout (before any work); report files --skip-bad left out."""
    from ..data import load_data

    ds = load_data(path, layout, config, model)
    skipped = getattr(ds, "skipped", ())
    if skipped and say is not None:
        say(f"skipped {len(skipped)} unreadable file(s) in {path} (--skip-bad), first: {skipped[0]}")
    return ds


def data_arg(path, layout, config: DataConfig, model=None, say=None):
    """For library calls that take a data path: the path itself for plain arrays (loaded there, as before),
    else the opened, checked source."""
    from ..sources import detect_kind

    if path is None or (detect_kind(path, config) == "arrays" and config.samples is None):
        return path
    return open_data(path, layout, config, model, say)
