"""The content of a job's input files, as its specification carries it.

A job's artifact path holds a hash of its specification (:mod:`pd.pipeline.plan`). Everything the
job reads that is not another job's output must enter that specification by content, not
by name, or an edited file leaves a stale result in place: a folder's documents, a
questions file with its gold answers, prompt overrides, ``reg_data``, the MMLU-Pro file,
and a local model folder. This module computes those identities; the plan puts them in
the specifications.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from pd.io import file_hash, stable_hash

# The files of a local model folder that define what it computes, beside its weights' index.
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
               "chat_template.jinja", "chat_template.json", "model.safetensors.index.json",
               "pytorch_model.bin.index.json")


def file_identity(path: str | os.PathLike | None) -> str | None:
    """The content hash of a file or folder the config names.

    Args:
        path: the file or folder (None or empty: none named).

    Returns:
        :func:`pd.io.file_hash` of it; None when none is named or it does not exist (a hub source).
    """
    return file_hash(path) if path and Path(path).exists() else None


def dataset_entry(name: str, entry: dict) -> dict:
    """A dataset's config entry as jobs carry it, with the content of the user's files it names.

    A folder's documents enter as ``documents_hash`` (their ids and texts as loaded); each file the
    entry names (a questions file with its gold answers, a HotpotQA file, a SQuADShifts ``root``)
    enters ``files_hash``. The SQuADShifts files shipped in data/ are versioned with the code, so
    their path stands for them.

    Args:
        name: the dataset's name.
        entry: its resolved config entry (not modified).

    Returns:
        A new dict: the entry plus those hashes.

    Raises:
        DataError: the folder cannot be loaded (:func:`pd.data.load_folder`).
    """
    from pd.data import get_loader

    loader = get_loader(entry["loader"])
    out = dict(entry)
    out.update(loader.content_identity(name, entry))  # a folder's documents (its questions file checked too)
    named = {k: entry[k] for k in ("questions", "root") if entry.get(k)}
    if not loader.path_is_folder and entry.get("path"):
        named["path"] = entry["path"]
    if named:
        out["files_hash"] = {k: file_identity(v) for k, v in sorted(named.items())}
    return out


def prompt_overrides(prompts: dict[str, str]) -> dict:
    """Prompt template overrides as jobs carry them: name -> ``{"path", "hash"}`` (the file's content)."""
    return {k: {"path": v, "hash": file_identity(v)} for k, v in sorted(prompts.items())}


def local_model_fingerprint(folder: str | os.PathLike) -> str:
    """What identifies a local model folder's content, cheaply: its config, tokenizer and index files
    (:data:`MODEL_FILES`) by content, and each weight file by name, size and (safetensors) header,
    which lists every tensor's name, dtype, shape and offsets.

    Args:
        folder: the model folder (as ``models.<name>.path`` names it).

    Returns:
        A 16-hex-digit hash; that of an empty listing when the folder does not exist (loading it fails later,
        with its own message).
    """
    folder = Path(folder).expanduser()
    parts: list = []
    if folder.is_dir():
        parts += [[n, file_hash(folder / n)] for n in MODEL_FILES if (folder / n).is_file()]
        for p in sorted(folder.iterdir()):
            if p.suffix in (".safetensors", ".bin", ".pt", ".gguf") and p.is_file():
                parts.append([p.name, p.stat().st_size, _safetensors_header(p) if p.suffix == ".safetensors" else None])
    return stable_hash(parts, 16)


class ModelEntries:
    """The entries of the models a job loads, as its specification carries them (``models_extra``)."""

    def __init__(self, cfg: dict, reg: dict):
        """Args: cfg: the resolved config; reg: its model registry (:func:`pd.models.registry`)."""
        self.cfg, self.reg = cfg, reg
        self.precisions: dict[str, str] = {}  # model -> its resolved `dtype: auto`
        self.fingerprints: dict[str, str] = {}  # local model -> its folder's fingerprint

    def entries(self, *names: str | None) -> dict | None:
        """The config's own entries (`models:`) of the named models, so the job resolves them and a
        changed entry (another path or dtype) changes the job's hash; ``dtype: auto`` resolved to the
        precision the job will run in (:func:`pd.precision.plan_precision`: the machine decides, so the
        same config is float32 on one CPU and bfloat16 on another, and the two never share a result);
        a local folder's content as ``fingerprint`` (:func:`local_model_fingerprint`).

        Args:
            *names: model names (None ones skipped).

        Returns:
            name -> entry, or None when no model needs one (built-in models of a fixed precision, the
            test models). An entry's `base:` is always a built-in model, so nothing else is needed.
        """
        own = self.cfg.get("models") or {}
        out = {}
        for n in sorted({n for n in names if n}):
            entry = dict(own.get(n) or {})
            if self.reg[n].dtype == "auto":
                entry = {"base": n} if not entry else entry
                entry["dtype"] = self._precision(n)
            if self.reg[n].source == "local":
                if n not in self.fingerprints:
                    self.fingerprints[n] = local_model_fingerprint(self.reg[n].path)
                entry["fingerprint"] = self.fingerprints[n]
            if entry:
                out[n] = entry
        return out or None

    def _precision(self, name: str) -> str:
        """What ``dtype: auto`` resolves to for model ``name`` on the machines that run its jobs."""
        if name not in self.precisions:
            from pd.models import layer_shape
            from pd.precision import plan_precision
            from pd.site import load_site

            site = load_site(self.cfg.get("slurm_site"))
            self.precisions[name] = plan_precision(self.cfg.get("device", "auto"), site.device if site else None,
                                                   site.precision if site else None, layer_shape(self.reg[name]))
        return self.precisions[name]


def _safetensors_header(path: Path) -> str | None:
    """The hash of a safetensors file's JSON header (8-byte little-endian length, then the header)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:  # not a safetensors header; the size stands for the file
            return None
        raw = f.read(n)
    try:
        return stable_hash(json.loads(raw), 16)
    except ValueError:
        return stable_hash(raw.hex(), 16)
