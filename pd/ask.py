"""``pd ask``: answer questions with an adapter written by ``pd inject``.

It loads the base model named in the adapter's ``pd_meta.json`` with the adapter (or
without, for comparison) and answers closed-book, or with BM25 retrieval over a folder
using the evaluation's RAG prompt. ``compare`` answers each question with and without the
adapter from one load (:func:`pd.recall.load_generators`); :func:`check` grades a user's
questions with gold answers three ways, as ``pd inject`` grades its held-out questions
(:mod:`pd.recall`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from pd.context import check_generator_fits
from pd.data import load_folder
from pd.errors import ConfigError, DataError
from pd.inject import DATA_DIR, META_FILE, PASSAGES_FILE, project_config
from pd.io import read_json, read_jsonl, read_text

ASK_DEFAULTS = {"k": 7, "temperature": 0.25, "max_tokens": 256}


def ask(adapter_dir: str | Path, questions: Sequence[str], *, rag: str | Path | None = None,
        k: int = ASK_DEFAULTS["k"], temperature: float = ASK_DEFAULTS["temperature"],
        max_tokens: int = ASK_DEFAULTS["max_tokens"], use_adapter: bool = True, seed: int = 0,
        config: str | None = None, compare: bool = False) -> list[dict]:
    """Answers to ``questions`` from the base model of ``adapter_dir`` with (or without) the adapter.

    With ``rag`` the BM25 top-``k`` documents of that folder go into the prompt, as in
    evaluation (:func:`pd.evaluation.evaluate.eval_conversation`). With ``compare`` each
    question is also answered without the adapter, from the same load.

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
        compare: also answer without the adapter (``base_answer``, ``base_finish_reason``).

    Returns:
        One row per question: question, answer, retrieved ids, model, adapter, finish reason (and with
        ``compare`` the base model's answer and finish reason).

    Raises:
        DataError: a damaged adapter folder, an empty question, or a prompt longer than the model's context.
        ConfigError: a bad ``k`` or config, or ``compare`` without the adapter.
    """
    from pd.evaluation.evaluate import eval_conversation
    from pd.generate import SamplingParams

    adapter_dir = Path(adapter_dir)
    if not questions or not all(q.strip() for q in questions):
        raise DataError("ask needs a non-empty question")
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"--k must be a positive integer, got {k!r}")
    if compare and not use_adapter:
        raise ConfigError("--compare answers with and without the adapter; drop --no-adapter")
    model = adapter_model(adapter_dir, check_weights=use_adapter)
    retrieved: list[list[str]] = [[] for _ in questions]
    ds = None
    if rag is not None:
        from pd.evaluation.retrieve import make_retriever

        ds = load_folder(rag)
        retrieved = make_retriever("bm25", ds.documents).search(list(questions), min(k, len(ds.documents)))
    cfg = project_config(config)
    params = SamplingParams(temperature=temperature, max_new_tokens=max_tokens, seed=seed)
    if compare:
        from pd.recall import load_generators

        gens = load_generators(model, adapter_dir, cfg)
        gen, base = gens.adapted, gens.base
    else:
        gen, base = _generator(model, cfg, adapter=str(adapter_dir) if use_adapter else None), None
    convs = [eval_conversation(q, [ds.documents[d].text for d in ids] if ds else None)
             for q, ids in zip(questions, retrieved)]
    what = "question (with its retrieved documents)" if ds else "question"
    prompts = {f"{i + 1} ({q[:40]!r}...)": c[0]["content"] for i, (q, c) in enumerate(zip(questions, convs))}
    check_generator_fits(gen, prompts, max_tokens, what)  # before any generation
    outs = gen.generate(convs, params)
    rows = [{"question": q, "answer": c[0].text.strip(), "retrieved": ids, "model": model,
             "adapter": str(adapter_dir) if use_adapter else None, "finish_reason": c[0].finish_reason}
            for q, ids, c in zip(questions, retrieved, outs)]
    if base is not None:
        for r, c in zip(rows, base.generate(convs, params)):
            r.update(base_answer=c[0].text.strip(), base_finish_reason=c[0].finish_reason)
    return rows


def read_questions(path: str | Path) -> list[str]:
    """The questions of ``--file``: one per non-blank line, or the ``question`` of each row of a ``.jsonl`` file.

    Args:
        path: a text file, or a JSONL file (a questions file with or without answers).

    Returns:
        The questions, in file order.

    Raises:
        DataError: a missing or empty file, or a JSONL row without a non-empty string ``question``
            (naming the file and the row).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"questions file {path} does not exist")
    if path.suffix.lower() == ".jsonl":
        questions = []
        for n, row in enumerate(read_jsonl(path), 1):
            q = row.get("question")
            if not isinstance(q, str) or not q.strip():
                raise DataError(f"{path} row {n}: needs a non-empty string 'question'")
            questions.append(q)
    else:
        questions = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if not questions:
        raise DataError(f"questions file {path} has no question")
    return questions


def check(adapter_dir: str | Path, questions_file: str | Path, *, temperature: float = ASK_DEFAULTS["temperature"],
          max_tokens: int = ASK_DEFAULTS["max_tokens"], seed: int = 0, config: str | None = None
          ) -> tuple[dict, list[dict]]:
    """A user's questions with gold answers asked three ways and graded (:mod:`pd.recall`): ``pd ask --check``.

    Each question is asked closed-book with the adapter and without it, and by the base model with
    its passage in the teacher's prompt: the passages the row names (``doc``/``doc_ids``: a
    passage id or a document's file, as in the adapter's ``data/passages.jsonl``), else the
    BM25 top-1 passage. Answers are graded by substring match of the gold answers.

    Args:
        adapter_dir: the ``--out`` folder of ``pd inject``.
        questions_file: JSONL or CSV with ``question`` and ``answers`` per row
            (:mod:`pd.data.question_rows`).
        temperature: sampling temperature.
        max_tokens: the longest answer in tokens.
        seed: the sampling seed.
        config: a project config (model registry, prompts, backend).

    Returns:
        ``(summary, graded rows)`` as :func:`pd.recall.recall` gives them; a row's ``passage_ids``
        names the passages of its ``passage`` answer (``retrieved`` when BM25 chose it).

    Raises:
        DataError: a damaged adapter folder, or a bad questions file or row (naming the file and row).
        ConfigError: a bad config.
    """
    from pd.data.question_rows import read_question_rows
    from pd.generate import SamplingParams
    from pd.recall import load_generators, recall

    adapter_dir = Path(adapter_dir)
    model = adapter_model(adapter_dir)
    passages = _passages(adapter_dir)
    names = set(passages) | {p["source"] for p in passages.values()}
    rows = read_question_rows(questions_file, names if passages else None)
    cases, chosen = [], _chosen_passages(rows, passages)
    for r, (ids, retrieved) in zip(rows, chosen):
        cases.append({"id": r["id"], "doc_id": ", ".join(r["doc_ids"]) or None, "question": r["question"],
                      "golds": list(r["answers"]),
                      "passage": "\n\n".join(passages[i]["text"] for i in ids) if ids else None,
                      "passage_ids": ids, "retrieved": retrieved})
    gens = load_generators(model, adapter_dir, project_config(config))
    params = SamplingParams(temperature=temperature, max_new_tokens=max_tokens, seed=seed)
    summary, graded = recall(gens, cases, params, noun="questions")
    by_id = {c["id"]: c for c in cases}
    for g in graded:
        g.update(passage_ids=by_id[g["id"]]["passage_ids"], retrieved=by_id[g["id"]]["retrieved"])
    summary.update(questions_file=str(questions_file), adapter=str(adapter_dir), model=model,
                   passages_file=str(adapter_dir / DATA_DIR / PASSAGES_FILE) if passages else None)
    return summary, graded


def _passages(adapter_dir: Path) -> dict[str, dict]:
    """The passages an inject trained on (``data/passages.jsonl``), by id; {} for a folder without them."""
    path = adapter_dir / DATA_DIR / PASSAGES_FILE
    if not path.is_file():
        return {}
    rows = read_jsonl(path)
    for n, r in enumerate(rows, 1):
        if not (isinstance(r.get("id"), str) and isinstance(r.get("text"), str) and isinstance(r.get("source"), str)):
            raise DataError(f"{path} row {n}: expected id, source and text strings (rewrite it with `pd inject`)")
    return {r["id"]: r for r in rows}


def _chosen_passages(rows: list[dict], passages: dict[str, dict]) -> list[tuple[list[str], bool]]:
    """Per row, the passage ids for its ``passage`` answer and whether BM25 chose them (none without passages)."""
    if not passages:
        return [([], False) for _ in rows]
    from pd.data import Document
    from pd.evaluation.retrieve import make_retriever

    unnamed = [r["question"] for r in rows if not r["doc_ids"]]
    top = iter(make_retriever("bm25", {i: Document(i, p["text"], i) for i, p in passages.items()})
               .search(unnamed, 1) if unnamed else [])
    out = []
    for r in rows:
        if r["doc_ids"]:
            out.append(([i for i, p in passages.items() if i in r["doc_ids"] or p["source"] in r["doc_ids"]], False))
        else:
            out.append((list(next(top)), True))
    return out


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
    """The answers: one JSON line each, the bare answer of a single question, or Q:/A: blocks.

    Args:
        rows: rows from :func:`ask`.
        as_json: one JSON line per row.
        stream: where to print (default stdout).
    """
    import json

    stream = stream or sys.stdout

    for r in rows:
        if as_json:
            print(json.dumps(r), file=stream)
        elif "base_answer" in r:
            print(f"Q: {r['question']}\nwith the adapter: {r['answer']}\nwithout it: {r['base_answer']}\n",
                  file=stream)
        elif len(rows) == 1:
            print(r["answer"], file=stream)
        else:
            print(f"Q: {r['question']}\nA: {r['answer']}\n", file=stream)


def print_check(summary: dict, rows: list[dict], as_json: bool = False, stream=None) -> None:
    """``pd ask --check``'s report: each question with its grade per way, then the summary.

    Args:
        summary: from :func:`check`.
        rows: the graded rows from :func:`check`.
        as_json: one JSON line per graded answer, then ``{"summary": ...}``.
        stream: where to print (default stdout).
    """
    import json

    stream = stream or sys.stdout
    if as_json:
        for r in rows:
            print(json.dumps(r), file=stream)
        print(json.dumps({"summary": summary}), file=stream)
        return
    marks: dict[str, dict[str, str]] = {}
    for r in rows:
        marks.setdefault(r["id"], {"question": r["question"]})[r["way"]] = "yes" if r["correct"] else "no"
    print(f"{'adapter':>7} {'base':>4} {'passage':>7}  question", file=stream)
    for m in marks.values():
        print(f"{m['adapter']:>7} {m['base']:>4} {m.get('passage', '-'):>7}  {m['question']}", file=stream)
    print(f"\nthe adapter {summary['line']}", file=stream)
    docs = {d: c for d, c in summary["documents"].items() if d}
    if len(docs) > 1:
        for d, c in docs.items():
            print(f"  {d}: {c['line']}", file=stream)
    if summary["overall"]["passage"] is None:
        print(f"(not asked with the passage: the adapter folder has no {DATA_DIR}/{PASSAGES_FILE}; "
              "a rerun of `pd inject` writes it)", file=stream)


def _generator(model: str, cfg: dict, adapter: str | None):
    """The jobs' generator (pd.pipeline.run) on the project config's backend, without a progress bar."""
    from pd.pipeline.jobtools import make_job_generator

    gen = cfg.get("generation", {})
    backend = gen.get("backend", "transformers")
    options = {"progress": False} if backend == "transformers" else {}
    return make_job_generator(model, backend=backend, batch_size=8, base_url=gen.get("openai_base_url"),
                              models_extra=cfg.get("models"), adapter=adapter, **options)
