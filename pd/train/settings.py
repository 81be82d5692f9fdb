"""Training settings: one dataclass holding the paper's defaults (its Table 8).

Field names match the ``training:`` block of config.yaml (see :mod:`pd.config`), so the
config layer can pass its resolved dict to :meth:`TrainConfig.from_dict` unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pd.errors import ConfigError
from pd.train.losses import DIRECTIONS
from pd.train.sequences import Limits

PARALLEL = ("ddp", "fsdp")

# Keys of config.yaml's training block that other stages read (the data generation step).
OUTSIDE_LOOP = ("heldout_fraction",)

METHODS = ("pd", "pd_reverse", "pd_reg", "sft", "sft_distractors", "uft")
KL_METHODS = ("pd", "pd_reverse", "pd_reg")
TEACHER_FREE = ("sft", "sft_distractors", "uft")


@dataclass
class TrainConfig:
    method: str = "pd"
    seed: int = 0
    # optimisation (Table 8)
    lr: float = 1e-5
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    batch_size: int = 4  # per process (the paper: per GPU)
    grad_accum: int = 1
    bucket_batches: int = 8  # batches per length bucket (pd.train.buckets): less padding; 1 = plain shuffle
    epochs: float = 10
    warmup_epochs: float = 1.0  # added to warmup_steps; Llama-3: 1 epoch, Qwen2.5: 0 epochs + 100 steps
    warmup_steps: int = 0
    max_steps: int | None = None  # if set, the run (and its schedule) lasts this many steps instead of the epochs
    max_seconds: float | None = None  # wall-clock budget for the loop
    # LoRA
    rank: int = 1024
    alpha_factor: float = 2.0  # alpha = alpha_factor * rank
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    gradient_checkpointing: bool = False
    parallel: str = "ddp"  # several processes: "ddp" replicates the model, "fsdp" shards it (pd.train.fsdp)
    # distillation
    kd_temperature: float = 2.0
    t2_scale: bool = False
    kl_direction: str | None = None  # None: "reverse" for pd_reverse, else "forward"
    teacher_topk: int = 0  # 0: live teacher forward pass; k > 0: cached top-k targets
    teacher_logprob_dtype: str = "float16"  # storage of cached log-probabilities (float32: exact)
    chunk_size: int | None = 128  # answer tokens per loss chunk (None: all at once)
    # sequences
    max_answer_tokens: int = 512
    max_teacher_tokens: int = 768
    max_reg_tokens: int = 1024
    # method specifics
    reg_fraction: float = 0.5  # pd_reg: share of each batch that is instruction data
    reg_data: str | None = None  # pd_reg: local JSONL of {instruction, response}, or "tulu3"
    reg_limit: int | None = 2000  # pd_reg: instruction pairs to load at most
    uft_chunk_tokens: int = 256
    uft_overlap: int = 64
    distractors: int = 2
    gold_drop_prob: float = 0.4
    # bookkeeping
    checkpoint_every: int = 0  # optimizer steps between checkpoints (0: none)
    snapshot_seconds: list[float] = field(default_factory=list)  # adapter snapshots at these elapsed times
    snapshot_interval: float = 0.0  # ... and every this many seconds (0: none)
    log_every: int = 1
    progress: bool = True
    keep_checkpoints: bool = False  # keep the work folder's checkpoints after success

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"training method {self.method!r}; allowed: {list(METHODS)}")
        if self.kl_direction is not None and self.kl_direction not in DIRECTIONS:
            raise ConfigError(f"training.kl_direction {self.kl_direction!r}; allowed: {list(DIRECTIONS)} or null")
        positive = {"lr": self.lr, "batch_size": self.batch_size, "grad_accum": self.grad_accum, "epochs": self.epochs,
                    "rank": self.rank, "alpha_factor": self.alpha_factor, "kd_temperature": self.kd_temperature,
                    "max_grad_norm": self.max_grad_norm, "log_every": self.log_every}
        bad = {k: v for k, v in positive.items() if not (isinstance(v, (int, float)) and v > 0)}
        if bad:
            raise ConfigError(f"training: these settings must be positive numbers: {bad}")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.warmup_epochs < 0 or self.checkpoint_every < 0:
            raise ConfigError("training: weight_decay, warmup_steps, warmup_epochs and checkpoint_every must be >= 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"training.lora_dropout must lie in [0, 1), got {self.lora_dropout}")
        if self.parallel not in PARALLEL:
            raise ConfigError(f"training.parallel {self.parallel!r}; allowed: {list(PARALLEL)}")
        if self.teacher_topk < 0:
            raise ConfigError(f"training.teacher_topk must be 0 (live teacher) or a positive k, got {self.teacher_topk}")
        if self.method == "pd_reg":
            if not 0.0 < self.reg_fraction < 1.0:
                raise ConfigError(f"training.reg_fraction must lie in (0, 1) for pd_reg, got {self.reg_fraction}")
            n_reg = round(self.batch_size * self.reg_fraction)
            if not 1 <= n_reg < self.batch_size:
                raise ConfigError(f"pd_reg: batch_size {self.batch_size} x reg_fraction {self.reg_fraction} must leave "
                                  "at least one instruction row and one passage row per batch (use batch_size >= 2)")
        if self.snapshot_interval and self.snapshot_interval < 1:
            raise ConfigError(f"training.snapshot_interval is in seconds and names snapshots by whole seconds: "
                              f"use 0 (off) or >= 1, got {self.snapshot_interval}")
        if not (isinstance(self.bucket_batches, int) and self.bucket_batches >= 1):
            raise ConfigError(f"training.bucket_batches must be an integer >= 1 (1: no length bucketing), "
                              f"got {self.bucket_batches!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"training.max_steps must be >= 1 or null, got {self.max_steps}")
        self.limits()  # validates the token limits

    # ------------------------------------------------------------------ derived

    @property
    def lora_alpha(self) -> float:
        return self.alpha_factor * self.rank

    @property
    def direction(self) -> str:
        return self.kl_direction or ("reverse" if self.method == "pd_reverse" else "forward")

    @property
    def uses_kl(self) -> bool:
        return self.method in KL_METHODS

    @property
    def reg_rows(self) -> int:
        """Instruction rows per micro-batch (pd_reg), the rest are passage rows."""
        return round(self.batch_size * self.reg_fraction) if self.method == "pd_reg" else 0

    def limits(self) -> Limits:
        return Limits(self.max_answer_tokens, self.max_teacher_tokens, self.max_reg_tokens)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides) -> "TrainConfig":
        """Build from a (config.yaml) dict; unknown keys are an error naming the allowed ones.

        Keys in :data:`OUTSIDE_LOOP` belong to other stages and are skipped.
        """
        d = {k: v for k, v in {**d, **overrides}.items() if k not in OUTSIDE_LOOP}
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ConfigError(f"training: unknown setting(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**d)
