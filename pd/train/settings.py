"""Training settings: :class:`TrainConfig`, the one source of every training default.

Each field carries its default, its help text and its JSON-Schema constraint
(``metadata["schema"]``), the way TRL's config dataclasses hold defaults and help. From
those fields come

- the ``training`` part of config.yaml's schema (:func:`training_schema`; pd.config puts
  it into ``workflow/schemas/config.schema.yaml`` as it loads the file), so the config and
  the dataclass accept the same keys, types and ranges;
- the range checks :class:`TrainConfig` and :class:`Limits` run on themselves (the same
  per-field schemas, so validation is written once); only checks across fields are code;
- the defaults every adapter's specification lists (:func:`spec_defaults`).

The methods are objects in :mod:`pd.train.methods` (one module each); :data:`METHODS`
(trained), :data:`GRID_METHODS` (an experiment grid's ``method`` axis, which adds the
untrained base model) and :data:`DISTILLING_METHODS` are the built-in ones, read from that
registry (its functions give the current ones, a method added later included).

A new setting is one field here (with ``in_spec=False``, so existing adapters keep their
hashes); config.yaml accepts it at once.

This module imports no torch, so the config layer can read it cheaply.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator

from pd.errors import ConfigError
from pd.train.methods.registry import distilling_methods, get_method, grid_methods, trained_methods

METHODS = trained_methods()
DISTILLING_METHODS = distilling_methods()
GRID_METHODS = grid_methods()
DIRECTIONS = ("forward", "reverse")
PARALLEL = ("auto", "ddp", "fsdp")
LOGPROB_DTYPES = ("float16", "bfloat16", "float32")
TRACKERS = ("tensorboard", "wandb", "mlflow")
# The top-k a cell with a teacher other than its student caches when its `teacher_topk` is 0:
# the teacher then runs in a teacher job sized for it, never inside the student's training
# job. A cached token costs 6k + 16 bytes (k int32 ids, k float16 log-probabilities, four
# float32 normalisers): 784 bytes at k = 128, so a paper-size dataset (30k answers of about
# 150 tokens) needs about 3.5 GB.
SEPARATE_TEACHER_TOPK = 128

# Settings that were removed, with what takes their place: a config or training block that still sets
# one is refused with this (:func:`check_removed`), not with a bare "unknown key".
REMOVED = {"grad_accum": "batch_size is the global batch; set micro_batch_size"}

_NUM, _INT = "number", "integer"
_BOUNDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}


def _setting(default: Any = dataclasses.MISSING, *, help: str, schema: dict, in_spec: bool = False,
             config: bool = True, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its help text and its JSON-Schema constraint.

    Args:
        default: the default value (immutable); use ``factory`` for a list.
        help: one line for the schema's description and the reader.
        schema: the JSON Schema (draft 2020-12) a value must match.
        in_spec: the default is written into every adapter's specification (so into its
            hash) even when no config sets it. Settings added later leave this False, so
            that adding one does not change the hash of every existing adapter.
        config: the key may be set in config.yaml's ``training`` blocks (``method`` and
            ``seed`` come from the grid cell instead).
        factory: a default factory (for mutable defaults).

    Returns:
        A :func:`dataclasses.field`.
    """
    meta = {"help": help, "schema": schema, "in_spec": in_spec, "config": config}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# Keys of config.yaml's training block that another stage reads (question generation), not the loop.
OUTSIDE_LOOP: dict[str, dict[str, Any]] = {
    "heldout_fraction": {
        "default": 0.1, "in_spec": True,
        "schema": {"type": _NUM, "minimum": 0, "maximum": 0.5},
        "help": "extra questions generated and held out for the held-out KL (0.1: 10% more); not the paper's"},
}


@dataclass
class TrainConfig:
    """Every training setting, with the paper's defaults (its Table 8, Llama-3 column)."""

    method: str = _setting("pd", schema={"type": "string"}, config=False,
                           help="training method (a trained method of pd.train.methods)")
    seed: int = _setting(0, schema={"type": _INT, "minimum": 0}, config=False, help="seed of the run")
    # optimisation (Table 8)
    lr: float = _setting(1e-5, schema={"type": _NUM, "exclusiveMinimum": 0}, in_spec=True, help="peak learning rate")
    weight_decay: float = _setting(0.1, schema={"type": _NUM, "minimum": 0}, in_spec=True, help="AdamW weight decay")
    max_grad_norm: float = _setting(1.0, schema={"type": _NUM, "exclusiveMinimum": 0}, in_spec=True,
                                    help="gradient clipping norm")
    batch_size: int = _setting(4, schema={"type": _INT, "minimum": 1}, in_spec=True,
                               help="the global batch: rows per optimizer step over all processes (the paper's "
                                    "batch size; micro-batches and gradient accumulation make it up)")
    micro_batch_size: int | str = _setting(  # noqa: RUF009 (_setting returns a dataclasses.field)
        "auto", schema={"oneOf": [{"type": _INT, "minimum": 1}, {"type": "string", "enum": ["auto"]}]},
        help="rows per forward/backward pass and process; gradients are accumulated up to batch_size (which "
             "processes x micro_batch_size must divide); auto: the largest that fits the GPU's memory by the cost "
             "model (pd.cost), on a CPU the whole batch of the process. Does not change the result")
    bucket_batches: int = _setting(
        8, schema={"type": _INT, "minimum": 1},
        help="batches per length bucket: each epoch is shuffled, cut into groups of this many batches (at most half "
             "the epoch's, so that batches differ by seed and epoch) and sorted by length within a group (less "
             "padding); 1: plain shuffle")
    epochs: float = _setting(10, schema={"type": _NUM, "minimum": 0.001}, in_spec=True, help="training epochs")
    warmup_epochs: float = _setting(1, schema={"type": _NUM, "minimum": 0}, in_spec=True,
                                    help="linear warmup in epochs, added to warmup_steps (Llama-3: 1; Qwen2.5: 0)")
    warmup_steps: int = _setting(0, schema={"type": _INT, "minimum": 0}, in_spec=True,
                                 help="linear warmup in optimizer steps (Qwen2.5: 100)")
    max_steps: int | None = _setting(None, schema={"type": [_INT, "null"], "minimum": 1},
                                     help="if set, the run (and its schedule) lasts this many steps instead of "
                                          "the epochs")
    max_seconds: float | None = _setting(None, schema={"type": [_NUM, "null"], "minimum": 0},
                                         help="wall-clock budget of the loop in seconds")
    min_steps: int = _setting(
        20, schema={"type": _INT, "minimum": 0},
        help="the fewest optimizer steps an adapter may train: a shorter run is refused, by pd validate and the plan "
             "from their estimate and by the adapter job from the real example count before it trains, and a report "
             "marks cells whose adapters took fewer; 0: no minimum")
    warmup_from_zero: bool = _setting(
        True, schema={"type": "boolean"},
        help="the warmup's first step runs at learning rate 0 (transformers' linear schedule, the paper's); false: "
             "step k of a w-step warmup runs at (k+1)/(w+1) of lr, so no step of a short run is wasted")
    # LoRA
    rank: int = _setting(1024, schema={"type": _INT, "minimum": 1, "maximum": 65536}, in_spec=True, help="LoRA rank")
    alpha_factor: float = _setting(2.0, schema={"type": _NUM, "exclusiveMinimum": 0}, in_spec=True,
                                   help="LoRA alpha = alpha_factor * rank")
    lora_dropout: float = _setting(0.0, schema={"type": _NUM, "minimum": 0, "exclusiveMaximum": 1}, in_spec=True,
                                   help="LoRA dropout")
    target_modules: str | list[str] = _setting(  # noqa: RUF009 (_setting returns a dataclasses.field)
        "all-linear", schema={"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        help="modules that get LoRA weights (PEFT's target_modules)")
    gradient_checkpointing: bool | str = _setting(  # noqa: RUF009 (_setting returns a dataclasses.field)
        "auto", schema={"oneOf": [{"type": "boolean"}, {"type": "string", "enum": ["auto"]}]},
        help="recompute activations in the backward pass (less memory, about a third more time); auto: when the "
             "cost model says the micro-batch needs it (never on a CPU)")
    parallel: str = _setting("auto", schema={"enum": list(PARALLEL)},
                             help="with several processes: ddp replicates the model, fsdp shards it; auto: ddp when "
                                  "the model fits one GPU, else fsdp (by the cost model; ddp on a CPU)")
    processes: int | str = _setting(  # noqa: RUF009 (_setting returns a dataclasses.field)
        1, schema={"oneOf": [{"type": _INT, "minimum": 1}, {"type": "string", "enum": ["auto"]}]},
        help="training processes the adapter job launches (torchrun; they share batch_size); "
             "auto: one per GPU the job holds (1 on a CPU-only job)")
    # distillation
    kd_temperature: float = _setting(2.0, schema={"type": _NUM, "exclusiveMinimum": 0}, in_spec=True,
                                     help="distillation temperature T")
    t2_scale: bool = _setting(False, schema={"type": "boolean"}, in_spec=True, help="scale the KL loss by T^2")
    kl_direction: str | None = _setting(None, schema={"enum": [*DIRECTIONS, None]},
                                        help='KL direction; null: "reverse" for pd_reverse, else "forward"')
    teacher_topk: int = _setting(0, schema={"type": _INT, "minimum": 0}, in_spec=True,
                                 help="0: teacher forward pass every step (a teacher other than the student: "
                                      "SEPARATE_TEACHER_TOPK cached); k > 0: cached top-k targets")
    teacher_logprob_dtype: str = _setting("float16", schema={"enum": list(LOGPROB_DTYPES)}, in_spec=True,
                                          help="storage of cached teacher log-probabilities (float32 is exact)")
    chunk_size: int | None = _setting(128, schema={"type": [_INT, "null"], "minimum": 1}, in_spec=True,
                                      help="answer tokens per loss chunk (null: all at once)")
    # sequences
    max_answer_tokens: int = _setting(512, schema={"type": _INT, "minimum": 1}, in_spec=True,
                                      help="answer tokens kept (longer answers are cut)")
    max_teacher_tokens: int = _setting(768, schema={"type": _INT, "minimum": 1}, in_spec=True,
                                       help="total length of the teacher's sequence (passage, question, answer)")
    max_reg_tokens: int = _setting(1024, schema={"type": _INT, "minimum": 1},
                                   help="total length of a pd_reg instruction-data sequence")
    # method specifics
    reg_fraction: float = _setting(0.5, schema={"type": _NUM, "minimum": 0, "maximum": 1}, in_spec=True,
                                   help="pd_reg: share of each batch that is instruction data")
    reg_data: str | None = _setting(
        "tulu3", schema={"type": ["string", "null"]}, in_spec=True,
        help="pd_reg's instruction data: a local JSONL of {instruction, response}, or tulu3 (the hub)")
    reg_limit: int | None = _setting(2000, schema={"type": [_INT, "null"], "minimum": 1},
                                     help="pd_reg: instruction pairs to load at most")
    uft_chunk_tokens: int = _setting(256, schema={"type": _INT, "minimum": 16}, in_spec=True,
                                     help="uft: tokens per passage chunk")
    uft_overlap: int = _setting(64, schema={"type": _INT, "minimum": 0}, in_spec=True,
                                help="uft: tokens shared by consecutive chunks")
    distractors: int = _setting(2, schema={"type": _INT, "minimum": 0}, in_spec=True,
                                help="sft_distractors: distractor passages per example")
    gold_drop_prob: float = _setting(0.4, schema={"type": _NUM, "minimum": 0, "maximum": 1}, in_spec=True,
                                     help="sft_distractors: probability that the gold passage is left out")
    # bookkeeping
    checkpoint_every: int = _setting(0, schema={"type": _INT, "minimum": 0}, in_spec=True,
                                     help="optimizer steps between checkpoints (0: none)")
    checkpoint_minutes: float = _setting(
        0.0, schema={"type": _NUM, "minimum": 0},
        help="minutes of wall clock between checkpoints (0: none); a SLURM site's adapter jobs default to its "
             "checkpoint_minutes (PD_CHECKPOINT_MINUTES). Resume is exact: no effect on the adapter")
    snapshot_seconds: list[float] = _setting(  # noqa: RUF009 (_setting returns a dataclasses.field)
        schema={"type": "array", "items": {"type": _NUM, "minimum": 0}}, in_spec=True, factory=list,
        help="adapter snapshots at these elapsed seconds")
    snapshot_interval: float = _setting(0.0, schema={"type": _NUM, "minimum": 0},
                                        help="... and every this many seconds (0: none; else >= 1)")
    log_every: int = _setting(1, schema={"type": _INT, "minimum": 1}, help="optimizer steps between log lines")
    log_with: list[str] | None = _setting(
        None, schema={"type": ["array", "null"], "items": {"enum": list(TRACKERS)}, "uniqueItems": True},
        help="also hand the step log's metrics to these trackers through accelerate (tensorboard, wandb, mlflow), "
             "logging into <adapter>.work/trackers; null: none")
    progress: bool = _setting(True, schema={"type": "boolean"}, config=False, help="show a progress bar")
    keep_checkpoints: bool = _setting(False, schema={"type": "boolean"},
                                      help="keep the work folder's checkpoints after success")

    def __post_init__(self):
        check_settings({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        method = get_method(self.method)
        if not method.trains:
            raise ConfigError(f"training.method: {self.method!r} trains nothing; "
                              f"allowed: {', '.join(trained_methods())}")
        method.check(self)
        if isinstance(self.processes, int):
            check_division(self.batch_size, self.processes,
                           self.micro_batch_size if isinstance(self.micro_batch_size, int) else None)
        if self.snapshot_interval and self.snapshot_interval < 1:
            raise ConfigError(f"training.snapshot_interval is in seconds and names snapshots by whole seconds: "
                              f"use 0 (off) or >= 1, got {self.snapshot_interval}")

    # ------------------------------------------------------------------ derived

    @property
    def lora_alpha(self) -> float:
        """LoRA's alpha: ``alpha_factor * rank``."""
        return self.alpha_factor * self.rank

    @property
    def direction(self) -> str:
        """The KL direction in use: ``kl_direction``, else the method's own (reverse for pd_reverse)."""
        return self.kl_direction or get_method(self.method).direction

    @property
    def uses_kl(self) -> bool:
        """Whether the method distils from a teacher (a KL loss) rather than training on tokens."""
        return get_method(self.method).distils

    @property
    def reg_rows(self) -> int:
        """Instruction rows per optimizer step (over all processes) of a regularised method (pd_reg); the rest
        of ``batch_size`` are passage rows."""
        return round(self.batch_size * self.reg_fraction) if get_method(self.method).regularised else 0

    def limits(self) -> Limits:
        """The token limits of the training sequences.

        Returns:
            :class:`Limits` with this config's answer, teacher and instruction-data limits.
        """
        return Limits(self.max_answer_tokens, self.max_teacher_tokens, self.max_reg_tokens)

    def as_dict(self) -> dict:
        """Every field and its value (a deep copy)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides) -> TrainConfig:
        """Build from a (config.yaml) dict; keys in :data:`OUTSIDE_LOOP` belong to other stages and are skipped.

        Args:
            d: training settings by field name (a resolved ``training`` block).
            **overrides: fields set on top of ``d`` (e.g. ``method`` and ``seed``).

        Returns:
            The validated :class:`TrainConfig`.

        Raises:
            ConfigError: an unknown key (the message names the allowed ones) or a value out of range.
        """
        d = {k: v for k, v in {**d, **overrides}.items() if k not in OUTSIDE_LOOP}
        check_removed(d)
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ConfigError(f"training: unknown setting(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**d)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_VALIDATORS = {**{n: Draft202012Validator(f.metadata["schema"]) for n, f in _FIELDS.items()},
               **{n: Draft202012Validator(o["schema"]) for n, o in OUTSIDE_LOOP.items()}}


@dataclass(frozen=True)
class Limits:
    """Token limits of the training sequences; the defaults are :class:`TrainConfig`'s (the paper's Table 8)."""

    max_answer_tokens: int = _FIELDS["max_answer_tokens"].default
    max_teacher_tokens: int = _FIELDS["max_teacher_tokens"].default
    max_reg_tokens: int = _FIELDS["max_reg_tokens"].default

    def __post_init__(self):
        check_settings(dataclasses.asdict(self))


def check_settings(values: dict[str, Any]) -> None:
    """Check training settings against their fields' schemas (types and ranges; not across fields).

    Args:
        values: setting name -> value; names are :class:`TrainConfig` fields or :data:`OUTSIDE_LOOP` keys.

    Raises:
        ConfigError: one line naming every setting that is out of range, with the allowed values of an enum.
        KeyError: a name that is no training setting (a bug in the caller).
    """
    problems = []
    for name, value in values.items():
        for err in _VALIDATORS[name].iter_errors(value):
            where = f"training.{name}" + "".join(f"[{p}]" for p in err.absolute_path)
            if err.validator == "enum":
                allowed = ", ".join("null" if v is None else str(v) for v in err.validator_value)
                problems.append(f"{where}: {err.instance!r} is not allowed; allowed: {allowed}")
            elif err.validator in _BOUNDS:
                bound = err.validator_value
                what = ("positive" if (err.validator, bound) == ("exclusiveMinimum", 0)
                        else f"{_BOUNDS[err.validator]} {bound}")
                problems.append(f"{where} must be {what}, got {err.instance!r}")
            else:
                problems.append(f"{where}: {err.message}")
    if problems:
        raise ConfigError("; ".join(problems))


def check_division(batch_size: int, processes: int, micro_batch_size: int | None) -> None:
    """Check that the global batch divides among the processes and into their micro-batches.

    Args:
        batch_size: ``training.batch_size`` (the global batch).
        processes: the training processes.
        micro_batch_size: rows per micro-batch and process (None: chosen later, any divisor of the share).

    Raises:
        ConfigError: naming the numbers that do not divide.
    """
    if batch_size % processes:
        raise ConfigError(f"training.batch_size {batch_size} (the global batch) is not divisible by the {processes} "
                          f"training processes: use a multiple of {processes}")
    share = batch_size // processes
    if micro_batch_size is not None and share % micro_batch_size:
        raise ConfigError(f"training.batch_size {batch_size} is not divisible by {processes} process(es) x "
                          f"micro_batch_size {micro_batch_size}: use a micro_batch_size that divides {share}, or auto")


def check_removed(block: dict | None, where: str = "training") -> None:
    """Refuse a training block that sets a removed setting (:data:`REMOVED`), saying what replaces it.

    Args:
        block: a training block (config.yaml's ``training``, a ``per_model`` entry, ...); None: nothing set.
        where: the block's place in the config, for the message.

    Raises:
        ConfigError: one line naming the first removed key and what to set instead.
    """
    removed = sorted(set(block or {}) & set(REMOVED))
    if removed:
        raise ConfigError(f"{where}.{removed[0]} was removed: {REMOVED[removed[0]]}")


def training_schema() -> dict:
    """The JSON Schema of a ``training`` block of config.yaml, from :class:`TrainConfig`'s fields.

    Keys with ``config=False`` (``method``, ``seed``, ``progress``) are left out; the
    :data:`OUTSIDE_LOOP` keys are added. No defaults: the block is used for overrides at
    several levels (``training``, ``per_model``, ``methods``, an experiment), and the
    defaults come from :func:`spec_defaults` beneath them all.

    Returns:
        A draft 2020-12 schema: an object with one property per setting and no others.
    """
    props = {n: {**f.metadata["schema"], "description": f.metadata["help"]}
             for n, f in _FIELDS.items() if f.metadata["config"]}
    props.update({n: {**o["schema"], "description": o["help"]} for n, o in OUTSIDE_LOOP.items()})
    return {"type": "object", "additionalProperties": False, "properties": copy.deepcopy(props)}


def spec_defaults() -> dict[str, Any]:
    """The training defaults every adapter's specification lists (the fields with ``in_spec``).

    Returns:
        A fresh dict, setting name -> default, with the :data:`OUTSIDE_LOOP` keys.
    """
    out = {n: copy.deepcopy(f.default_factory() if f.default is dataclasses.MISSING else f.default)
           for n, f in _FIELDS.items() if f.metadata["in_spec"]}
    out.update({n: copy.deepcopy(o["default"]) for n, o in OUTSIDE_LOOP.items() if o["in_spec"]})
    return out
