"""A small synthetic run (grade files, benchmark TSVs, manifest) for the report tests.

Each question gets a latent difficulty; a cell answers it correctly with a probability
set by its method, retrieval and axes, so methods differ the way the paper's do and the
paired tests have something to find. Deterministic for a given seed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pd.io import write_json, write_jsonl, write_text

BENCHMARK_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"
_METHOD_SKILL = {"pd": 1.2, "sft": 0.3, "base": -1.0, "uft": -0.6}
_RETRIEVAL_SKILL = {"none": 0.0, "bm25": 1.5, "dense": 1.8, "oracle": 2.5}


def _grade_rows(rng: np.random.Generator, item_ids: list[str], skill: float, difficulty: np.ndarray,
                grader: str, invalid_rate: float) -> list[dict]:
    p = 1.0 / (1.0 + np.exp(-(skill - difficulty)))
    correct = rng.random(len(item_ids)) < p
    invalid = rng.random(len(item_ids)) < invalid_rate
    rows = []
    for i, item in enumerate(item_ids):
        gold = [f"answer {i}"]
        ok = bool(correct[i])
        answer = f"It is answer {i}." if ok else f"I believe it is something else ({i})."
        if invalid[i]:
            rows.append({"item_id": item, "grader": grader, "correct": None, "valid": False,
                         "reason": "no <grade> tag in the judge output", "answer": answer, "gold": gold})
        else:
            rows.append({"item_id": item, "grader": grader, "correct": ok, "valid": True, "reason": None,
                         "answer": answer, "gold": gold})
    return rows


# 11 subjects x 6 verbs: no two of the first 66 questions share both
_SUBJECTS = ("harbour", "mill", "chapel", "orchard", "quarry", "granary", "lighthouse", "market", "tower", "gate",
             "well")
_VERBS = ("built", "owned", "painted", "repaired", "guarded", "sold")


def question_text(ds: str, i: int) -> str:
    """The synthetic test question ``i`` of a dataset (its evaluation rows carry it)."""
    return f"Who {_VERBS[i % len(_VERBS)]} the {_SUBJECTS[i % len(_SUBJECTS)]} of {ds} in {1800 + i}?"


def _eval_rows(rng: np.random.Generator, item_ids: list[str], skill: float, difficulty: np.ndarray) -> list[dict]:
    """Evaluation rows with a gold-answer log-likelihood that rises with skill and falls with difficulty."""
    per_token = -1.5 + 0.4 * skill - 0.5 * difficulty + rng.normal(0.0, 0.3, len(item_ids))
    return [{"item_id": item, "question": question_text(item.split("-q")[0], i), "answer": "x",
             "gold_logprob": 3 * float(v), "gold_logprob_per_token": float(v), "gold_alias": f"answer {i}",
             "gold_tokens": 3} for i, (item, v) in enumerate(zip(item_ids, per_token))]


LEAKED = (0, 7)  # the test questions of NYT that a generated training question restates


def _write_answers(path: Path, ds: str, n_questions: int) -> None:
    """A dataset's answers file (the training questions): about other years, and for NYT two restatements."""
    rows = [{"id": f"{ds}-g{k:03d}", "question_id": f"{ds}-g{k:03d}", "doc_id": "p0",
             "question": f"What happened to the {ds} bridge in {1700 + k}?", "answer": "x"} for k in range(n_questions)]
    if ds == "nyt":
        for k, i in enumerate(LEAKED):
            q = question_text(ds, i).rstrip("?").replace("Who ", "", 1)
            rows[k]["question"] = f"In {1800 + i}, who was it that {q.split(' in ')[0]}?"
    write_jsonl(path, rows)


def _write_adapter(folder: Path, rng: np.random.Generator, skill: float, method: str) -> None:
    """An adapter folder's heldout.json and train_log.jsonl (no weights: the report reads only these)."""
    before = 1.0 + 0.2 * rng.random()
    after = before * (0.5 - 0.1 * skill + 0.05 * rng.random())
    write_json(folder / "heldout.json", {"n_heldout": 6, "temperature": 2.0, "before": before, "after": after,
                                         "closed_fraction": 1 - after / before, "teacher": "tiny-llama"})
    rows = []
    for step in range(1, 11):
        row = {"step": step, "loss": float(2.0 * np.exp(-0.2 * step) + 0.05 * rng.random())}
        if method == "pd":
            row["kl"] = row["loss"]
        rows.append(row)
    write_jsonl(folder / "train_log.jsonl", rows)


def write_synthetic_run(root: str | os.PathLike, *, n_questions: int = 60, seed: int = 0,
                        grader: str = "judge:tiny-judge", model: str = "tiny-llama") -> Path:
    """Write grades, benchmarks and ``manifest.json`` under ``root``; returns the manifest path.

    Experiments: ``main`` (pd/sft/base x two datasets x closed-book/bm25, three seeds, the
    base model one seed, one cell without grades, some invalid judge grades; evaluation rows
    with the gold-answer log-likelihood, adapter folders with ``heldout.json`` and
    ``train_log.jsonl``, shared by the closed-book and BM25 cells) and
    ``n_questions`` / ``rank`` / ``snapshot`` (pd vs sft along one numeric axis, for figures).
    ``main``'s evaluation rows carry the questions (:func:`question_text`) and its adapters name the
    answers file they trained on, where NYT's training questions restate the test questions
    :data:`LEAKED` (the leakage audit's finds).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    cells: list[dict[str, Any]] = []
    difficulty = {ds: rng.normal(0.0, 1.2, n_questions) for ds in ("amazon", "nyt")}

    def add(experiment: str, axes: dict[str, Any], skill: float, *, invalid_rate: float = 0.0,
            write: bool = True, evidence: bool = False) -> None:
        ds = str(axes["dataset"])
        item_ids = [f"{ds}-q{i:04d}" for i in range(n_questions)]
        name = "_".join(f"{k}-{v}" for k, v in axes.items() if k not in ("model",))
        cell_id = f"{experiment}/{name}"
        grades = Path("grades") / experiment / f"{name}.jsonl"
        if write:
            write_jsonl(root / grades, _grade_rows(rng, item_ids, skill, difficulty[ds], grader, invalid_rate))
        extra: dict[str, Any] = {}
        if evidence and write:
            extra["evaluate"] = str(Path("eval") / experiment / f"{name}.jsonl")
            write_jsonl(root / extra["evaluate"], _eval_rows(rng, item_ids, skill, difficulty[ds]))
        if evidence and axes.get("method") != "base":
            adapter = Path("adapters") / f"{ds}_{axes['method']}_s{axes['seed']}"
            extra["adapter"] = str(adapter)
            if not (root / adapter).is_dir():
                _write_adapter(root / adapter, rng, skill, axes["method"])
            answers = Path("answers") / f"{ds}.jsonl"
            if not (root / answers).is_file():
                _write_answers(root / answers, ds, n_questions)
        bench = Path("benchmarks") / experiment / f"{name}.tsv"
        secs = 30.0 + 10.0 * rng.random()
        fields = [f"{secs:.4f}", f"0:00:{int(secs):02d}", f"{512 + 100 * rng.random():.2f}", "900.00", "400.00",
                  "410.00", "1.00", "2.00", "95.00", f"{secs * 1.9:.2f}"]
        write_text(root / bench, BENCHMARK_HEADER + "\n" + "\t".join(fields) + "\n")
        meta: dict[str, Any] = {"config": {"model": model, "method": axes.get("method"), "lr": 1e-5}}
        if axes.get("method") not in ("base", None):
            meta["adapter"] = {"train_tokens": int(20000 + 1000 * rng.random()), "teacher_tokens": 31000, "steps": 40}
            if evidence:  # the adapter job's specification names the answers file it trained on
                meta["adapter"]["workflow_spec"] = {"method": axes["method"], "answers": f"answers/{ds}.jsonl",
                                                    "training": {"heldout_fraction": 0.0}}
        cells.append({"experiment": experiment, "cell_id": cell_id, "axes": dict(axes, model=model), "grader": grader,
                      "grades": str(grades), "benchmarks": [str(bench)], "meta": meta, **extra})

    for ds in ("amazon", "nyt"):
        for retrieval in ("none", "bm25"):
            for method in ("pd", "sft", "base"):
                seeds = [0] if method == "base" else [0, 1, 2]
                for s in seeds:
                    skill = _METHOD_SKILL[method] + _RETRIEVAL_SKILL[retrieval] + rng.normal(0, 0.1)
                    write = not (ds == "nyt" and retrieval == "bm25" and method == "sft" and s == 2)
                    if ds == "nyt" and retrieval == "none" and method == "sft":
                        write = False  # a whole cell the workflow has not produced yet
                    add("main", {"dataset": ds, "retrieval": retrieval, "method": method, "seed": s}, skill,
                        invalid_rate=0.05, write=write, evidence=True)
    for nq in (5, 10, 30):
        for method in ("pd", "sft"):
            for s in (0, 1):
                skill = _METHOD_SKILL[method] + 0.5 * np.log(nq / 5) * (1.5 if method == "pd" else 0.7)
                axes = {"dataset": "nyt", "retrieval": "none", "method": method, "n_questions": nq, "seed": s}
                add("n_questions", axes, skill)
    for rank in (4, 16, 64):
        for method in ("pd", "sft"):
            skill = _METHOD_SKILL[method] + 0.3 * np.log2(rank / 4)
            add("rank", {"dataset": "nyt", "retrieval": "none", "method": method, "rank": rank, "seed": 0}, skill)
    for t in (60, 120, 180):
        for method in ("pd", "sft"):
            skill = _METHOD_SKILL[method] * t / 180
            add("snapshot", {"dataset": "nyt", "retrieval": "none", "method": method, "snapshot": t, "seed": 0}, skill)

    experiments = {
        "main": {"rows": ["method"], "columns": ["dataset"], "blocks": "retrieval", "title": "Synthetic main results"},
        "n_questions": {"rows": ["method"], "columns": ["n_questions"], "blocks": "retrieval",
                        "figures": [{"x": "n_questions", "logx": True}]},
        "rank": {"rows": ["method"], "columns": ["rank"], "blocks": "retrieval",
                 "figures": [{"x": "rank", "logx": True}]},
        "snapshot": {"rows": ["method"], "columns": ["snapshot"], "blocks": "retrieval",
                     "figures": [{"x": "snapshot"}]},
    }
    manifest = root / "manifest.json"
    write_json(manifest, {"cells": cells, "experiments": experiments})
    return manifest
