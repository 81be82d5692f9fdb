"""``pd ask``: answer questions with an adapter written by ``pd inject``.

It loads the base model named in the adapter's ``pd_meta.json`` with the adapter (or
without, for comparison) and answers closed-book, or with BM25 retrieval over a folder
using the evaluation's RAG prompt.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from pd.context import check_generator_fits
from pd.data import load_folder
from pd.errors import ConfigError, DataError
from pd.inject import META_FILE, project_config
from pd.io import read_json

ASK_DEFAULTS = {"k": 7, "temperature": 0.25, "max_tokens": 256}


def ask(adapter_dir: str | Path, questions: Sequence[str], *, rag: str | Path | None = None,
        k: int = ASK_DEFAULTS["k"], temperature: float = ASK_DEFAULTS["temperature"],
        max_tokens: int = ASK_DEFAULTS["max_tokens"], use_adapter: bool = True, seed: int = 0,
        config: str | None = None) -> list[dict]:
    """Answers to ``questions`` from the base model of ``adapter_dir`` with (or without) the adapter.

    With ``rag`` the BM25 top-``k`` documents of that folder go into the prompt, as in
    evaluation (:func:`pd.evaluation.evaluate.eval_conversation`).

    Args:
        adapter_dir: the ``--out`` folder of ``pd inject``.
        questions: the questions.
        rag: a folder of documents to retrieve from (None: closed-book).
        k: documents retrieved per question.
        temperature: sampling temperature.
        max_tokens: the longest answer in tokens.
        use_adapter: False: the base model alone, for comparison.
        seed: the sampling seed.
        config: a project config (model registry, prompts, backend).

    Returns:
        One row per question: question, answer, retrieved ids, model, adapter, finish reason.

    Raises:
        DataError: a damaged adapter folder, an empty question, or a prompt longer than the model's context.
        ConfigError: a bad ``k`` or config.
    """
    from pd.evaluation.evaluate import eval_conversation
    from pd.generate import SamplingParams

    adapter_dir = Path(adapter_dir)
    if not questions or not all(q.strip() for q in questions):
        raise DataError("ask needs a non-empty question")
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"--k must be a positive integer, got {k!r}")
    model = adapter_model(adapter_dir, check_weights=use_adapter)
    retrieved: list[list[str]] = [[] for _ in questions]
    ds = None
    if rag is not None:
        from pd.evaluation.retrieve import make_retriever

        ds = load_folder(rag)
        retrieved = make_retriever("bm25", ds.documents).search(list(questions), min(k, len(ds.documents)))
    cfg = project_config(config)
    params = SamplingParams(temperature=temperature, max_new_tokens=max_tokens, seed=seed)
    gen = _generator(model, cfg, adapter=str(adapter_dir) if use_adapter else None)
    convs = [eval_conversation(q, [ds.documents[d].text for d in ids] if ds else None)
             for q, ids in zip(questions, retrieved)]
    what = "question (with its retrieved documents)" if ds else "question"
    prompts = {f"{i + 1} ({q[:40]!r}...)": c[0]["content"] for i, (q, c) in enumerate(zip(questions, convs))}
    check_generator_fits(gen, prompts, max_tokens, what)  # before any generation
    outs = gen.generate(convs, params)
    return [{"question": q, "answer": c[0].text.strip(), "retrieved": ids, "model": model,
             "adapter": str(adapter_dir) if use_adapter else None, "finish_reason": c[0].finish_reason}
            for q, ids, c in zip(questions, retrieved, outs)]


def adapter_model(adapter_dir: Path, check_weights: bool = True) -> str:
    """The base model's name of an adapter folder of ``pd inject``, after checking the folder's files.

    Args:
        adapter_dir: the folder.
        check_weights: also check ``adapter_config.json`` and the safetensors header (the adapter is loaded).

    Returns:
        The model named in ``pd_meta.json``.

    Raises:
        DataError: one line naming the file that is missing, not JSON, lacks a field, or is no safetensors file.
    """
    meta_path = adapter_dir / META_FILE
    if not meta_path.is_file():
        raise DataError(f"{adapter_dir} is not an adapter folder written by pd (no {META_FILE}); "
                        "pass the --out folder of `pd inject`")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), str):
        raise DataError(f"{meta_path}: expected a JSON object with the base model's name in 'model'")
    if check_weights:
        from pd.adapters import adapter_config
        from pd.errors import ModelUnavailableError

        try:
            adapter_config(adapter_dir)  # a JSON object with a LoRA peft_type
        except ModelUnavailableError:
            raise DataError(f"{adapter_dir / 'adapter_config.json'}: missing (not a PEFT adapter folder)") from None
        weights = adapter_dir / "adapter_model.safetensors"
        try:
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        except Exception as err:  # safetensors raises its own error types, and OSError for a missing file
            raise DataError(f"{weights}: not a readable safetensors file ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None
    return meta["model"]


def print_answers(rows: list[dict], as_json: bool = False, stream=None) -> None:
    import json

    stream = stream or sys.stdout

    for r in rows:
        if as_json:
            print(json.dumps(r), file=stream)
        elif len(rows) == 1:
            print(r["answer"], file=stream)
        else:
            print(f"Q: {r['question']}\nA: {r['answer']}\n", file=stream)


def _generator(model: str, cfg: dict, adapter: str | None):
    """The jobs' generator (pd.pipeline.run) on the project config's backend, without a progress bar."""
    from pd.pipeline.jobtools import make_job_generator

    gen = cfg.get("generation", {})
    backend = gen.get("backend", "transformers")
    options = {"progress": False} if backend == "transformers" else {}
    return make_job_generator(model, backend=backend, batch_size=8, base_url=gen.get("openai_base_url"),
                              models_extra=cfg.get("models"), adapter=adapter, **options)
