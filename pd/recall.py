"""What an injection learned: questions asked three ways and graded against a reference.

Each question is asked three ways (:data:`WAYS`), all from one load of the model:

- ``adapter``: closed-book, with the adapter (the student's prompt: the bare question,
  template ``closed_book``, as ``pd ask`` and the evaluation ask it);
- ``base``: closed-book, the same weights with the adapter switched off (PEFT's
  ``disable_adapter`` context, so the base model is not loaded a second time);
- ``passage``: the base model with the passage in its prompt (template ``expert_answer``, the
  expert's and the PD teacher's prompt): the teacher's ceiling.

Each answer is graded by the first rule that applies (:data:`RULES`):

1. ``substring``: the question carries gold answers: a user's questions file's ``answers``, or a
   key span (:data:`KEY_FIELD`) a question writer recorded. Correct when a gold answer occurs in
   the answer as whole words (:func:`pd.evaluation.grade.substring_match`, ``word`` mode).
   Generated questions carry no key span today (question rows hold id, doc_id, question,
   generator, seed; answer rows add the expert's answer, finish reason and token count), so
   ``pd inject`` grades its held-out questions by rule 2 or 3.
2. ``judge``: a judge model is named (``--judge MODEL``): it is asked, as in the evaluation
   (:func:`pd.evaluation.grade.judge`, template ``judge_squadshifts``, greedy), whether the answer
   agrees with the teacher's answer(s); an invalid verdict counts as not recalled.
3. ``f1``: token F1 with the teacher's answer of at least :data:`F1_THRESHOLD`. Words are those of
   :func:`pd.text.normalise_answer` (case and punctuation folded, articles and common stop-words,
   "not" among them, dropped), and words of the question are left out of both sides, so an answer
   that only repeats the question scores 0 (where the teacher's answer has no word beyond the
   question's, all its words count). With several teacher answers, the best F1 counts.

The summary per document and overall reads "recalls N of M held-out facts (base K, with the
passage T)" (:func:`summary_line`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from pd.errors import ConfigError
from pd.io import write_json, write_jsonl

WAYS = ("adapter", "base", "passage")
WAY_NAMES = {"adapter": "closed-book with the adapter", "base": "closed-book without it (base)",
             "passage": "base model with the passage in its prompt (the teacher's ceiling)"}
RULES = ("substring", "judge", "f1")
KEY_FIELD = "key_span"  # a question's key span (a string or a list of strings), where its writer recorded one
# Token F1 (question words left out) at or above this counts as recalled. 0.5: at least half of the teacher's
# new words and half of the answer's (2PR/(P+R) >= 0.5); the name "Tamsin Quorrel" against "The shipwright Tamsin
# Quorrel founded it" is 0.8, a different name 0.
F1_THRESHOLD = 0.5
RECALL_FILE = "recall.json"
ANSWERS_FILE = "recall_answers.jsonl"


# --------------------------------------------------------------------------- grading


def _words(text: str) -> list[str]:
    from pd.text import normalise_answer

    return normalise_answer(text or "").split()


def token_f1(answer: str, reference: str, question: str = "") -> float:
    """Token F1 of ``answer`` against ``reference``, not counting the words of ``question``.

    Args:
        answer: the model's answer.
        reference: the reference answer (the teacher's).
        question: the question; its words are left out of both sides (unless the reference has
            no other word, then every word counts).

    Returns:
        2PR/(P+R) over the multisets of normalised words (0.0 when either side has none).
    """
    asked = set(_words(question))
    ref, ans = _words(reference), _words(answer)
    new_ref = [w for w in ref if w not in asked]
    if new_ref:
        ref, ans = new_ref, [w for w in ans if w not in asked]
    common = sum((Counter(ref) & Counter(ans)).values())
    if not common:
        return 0.0
    p, r = common / len(ans), common / len(ref)
    return 2 * p * r / (p + r)


def golds_of(row: dict) -> list[str] | None:
    """A question's gold answers: its ``answers`` (a user's file) or key span (:data:`KEY_FIELD`), else None."""
    for key in ("answers", KEY_FIELD):
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return [value]
        if isinstance(value, (list, tuple)) and any(isinstance(v, str) and v.strip() for v in value):
            return [v for v in value if isinstance(v, str) and v.strip()]
    return None


def grade(rows: Sequence[dict], judge_generator=None, threshold: float = F1_THRESHOLD) -> list[dict]:
    """Each answer row graded by the first rule that applies (module docstring).

    Args:
        rows: answer rows with ``question``, ``answer`` and ``golds`` (a list, or None) or
            ``references`` (the teacher's answers).
        judge_generator: the judge (rule 2), or None.
        threshold: rule 3's F1 threshold.

    Returns:
        The rows with ``rule``, ``correct`` (bool) and ``score`` (F1, or None), and for the judge
        ``judge_valid`` and ``judge_output``.

    Raises:
        ConfigError: a threshold outside (0, 1].
    """
    from pd.evaluation.grade import judge, substring_match

    if not 0 < threshold <= 1:
        raise ConfigError(f"F1 threshold must be in (0, 1], got {threshold!r}")
    out = [dict(r) for r in rows]
    to_judge = []
    for r in out:
        if r.get("golds"):
            r.update(rule="substring", correct=substring_match(r["answer"], r["golds"]), score=None)
        elif judge_generator is not None:
            to_judge.append(r)
        else:
            refs = r.get("references") or [""]
            score = max(token_f1(r["answer"], ref, r["question"]) for ref in refs)
            r.update(rule="f1", correct=score >= threshold, score=round(score, 4))
    if to_judge:
        verdicts = judge(judge_generator, [(r["question"], r["references"], r["answer"]) for r in to_judge])
        for r, (verdict, text, _) in zip(to_judge, verdicts):
            r.update(rule="judge", correct=bool(verdict.correct), score=None, judge_valid=verdict.valid,
                     judge_output=text)
    return out


# --------------------------------------------------------------------------- the models, loaded once


class AdapterOff:
    """A transformers generator with its LoRA layers bypassed (PEFT ``disable_adapter``): the base model.

    It shares the adapted generator's weights in memory; its name (the cache identity) is the
    base model's, as a generator loaded without the adapter names itself.
    """

    def __init__(self, inner):
        from pd.generate.transformers_backend import model_identity

        self.inner = inner
        loaded = str(next(inner.model.parameters()).dtype).removeprefix("torch.")
        self.name = f"transformers:{model_identity(dataclasses.replace(inner.spec, dtype=loaded))}"

    def __getattr__(self, attr):  # tokenizer, spec, backend, model ... of the wrapped generator
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def generate(self, conversations, params):
        with self.inner.model.disable_adapter():
            return self.inner.generate(conversations, params)

    def generate_scored(self, conversations, params, continuations=None):
        with self.inner.model.disable_adapter():
            return self.inner.generate_scored(conversations, params, continuations)

    def score(self, conversations, continuations):
        with self.inner.model.disable_adapter():
            return self.inner.score(conversations, continuations)


@dataclasses.dataclass
class Generators:
    """The adapted model and the base model; with transformers, one load (``base`` is :class:`AdapterOff`)."""

    adapted: Any
    base: Any


def load_generators(model: str, adapter: str | Path, project: dict, batch_size: int | str = 8) -> Generators:
    """The adapted and the base generator of ``model``, through the shared completion cache.

    With the transformers backend the model is loaded once, with the adapter unmerged, and the
    base generator switches it off; vLLM loads a generator for each. A project on the ``openai``
    backend gets transformers here (a server cannot load a local adapter).

    Args:
        model: the base model's registry name.
        adapter: the PEFT adapter folder.
        project: the project config (generation backend, model registry), or {}.
        batch_size: prompts per forward pass.

    Returns:
        The two generators.

    Raises:
        ConfigError: an unknown model or backend, or a backend that cannot load an adapter.
    """
    from pd.generate.cache import CachedGenerator
    from pd.pipeline.jobtools import generation_cache, make_job_generator

    gen = project.get("generation") or {}
    # The adapter is a local PEFT folder: an OpenAI-compatible server cannot load it, so the model is loaded here.
    backend = "transformers" if gen.get("backend") in (None, "openai") else gen["backend"]
    common = dict(backend=backend, batch_size=batch_size, models_extra=project.get("models"))
    if backend != "transformers":
        return Generators(make_job_generator(model, adapter=str(adapter), **common),
                          make_job_generator(model, **common))
    adapted = make_job_generator(model, adapter=str(adapter), progress=False, merge_adapter=False, **common)
    return Generators(adapted, CachedGenerator(AdapterOff(adapted.inner), generation_cache()))


def judge_generator(name: str, project: dict):
    """The judge named by ``--judge`` on the project's generation backend (greedy grades come from the cache).

    Raises:
        ConfigError: an unknown model or backend.
    """
    from pd.pipeline.jobtools import make_job_generator

    gen = project.get("generation") or {}
    backend = gen.get("backend", "transformers")
    return make_job_generator(name, backend=backend, batch_size=8, base_url=gen.get("openai_base_url"),
                              models_extra=project.get("models"),
                              **({"progress": False} if backend == "transformers" else {}))


# --------------------------------------------------------------------------- asking


def conversation(way: str, question: str, passage: str | None) -> list[dict]:
    """The prompt of one way: the bare question, or the passage and the question as the teacher reads them."""
    from pd.prompts import render

    if way == "passage":
        return [{"role": "user", "content": render("expert_answer", passage=passage, question=question)}]
    return [{"role": "user", "content": render("closed_book", question=question)}]


def ask_ways(gens: Generators, cases: Sequence[dict], params, ways: Sequence[str] = WAYS) -> list[dict]:
    """Each case asked each way: one answer row per (case, way).

    Args:
        gens: the generators (:func:`load_generators`).
        cases: ``id``, ``doc_id``, ``question``, ``passage`` (text, or None: not asked that way),
            ``golds`` or ``references``.
        params: the sampling parameters.
        ways: which of :data:`WAYS`.

    Returns:
        Rows ``id``, ``doc_id``, ``question``, ``way``, ``answer``, ``finish_reason``, ``golds``, ``references``.
    """
    rows = []
    for way in ways:
        todo = [c for c in cases if way != "passage" or c.get("passage")]
        if not todo:
            continue
        gen = gens.adapted if way == "adapter" else gens.base
        outs = gen.generate([conversation(way, c["question"], c.get("passage")) for c in todo], params)
        rows += [{"id": c["id"], "doc_id": c["doc_id"], "question": c["question"], "way": way,
                  "answer": o[0].text.strip(), "finish_reason": o[0].finish_reason, "golds": c.get("golds"),
                  "references": c.get("references")} for c, o in zip(todo, outs)]
    return rows


def heldout_cases(heldout_rows: Sequence[dict], passages: dict[str, str]) -> list[dict]:
    """One case per held-out question: the teacher's answers as references, and the question's passage.

    Args:
        heldout_rows: answer rows (``question_id``, ``doc_id``, ``question``, ``answer``; several
            answers to one question become its references).
        passages: passage id -> text.

    Returns:
        Cases as :func:`ask_ways` reads them, in the rows' order.
    """
    cases: dict[str, dict] = {}
    for r in heldout_rows:
        qid = str(r.get("question_id", r["id"]))
        case = cases.setdefault(qid, {"id": qid, "doc_id": r["doc_id"], "question": r["question"],
                                      "passage": passages.get(r["doc_id"]), "references": [], "golds": golds_of(r)})
        case["references"].append(r["answer"])
    return list(cases.values())


# --------------------------------------------------------------------------- summary


def summarise(graded: Sequence[dict], noun: str = "held-out facts", documents: Sequence[str] = ()) -> dict:
    """Counts per document and overall: questions, and how many each way got right.

    Args:
        graded: rows from :func:`grade`.
        noun: what is counted, for the line ("held-out facts", "of your questions").
        documents: documents to list even when no question is about them (in this order, first).

    Returns:
        ``{"overall": counts, "documents": {doc_id: counts}, "line": ..., "rules": {rule: answers}}``,
        counts being ``{"questions": M, "adapter": N, "base": K, "passage": T or None}`` (a way not asked:
        None), with ``passage_asked`` and, where answers were graded by F1, ``mean_f1`` per way.
    """
    def counts(rows: list[dict]) -> dict:
        c: dict[str, Any] = {"questions": len({r["id"] for r in rows})}
        for way in WAYS:
            got = [r for r in rows if r["way"] == way]
            c[way] = sum(r["correct"] for r in got) if got else None
        if c["passage"] is not None:
            c["passage_asked"] = len([r for r in rows if r["way"] == "passage"])
        f1 = {w: [r["score"] for r in rows if r["way"] == w and r.get("score") is not None] for w in WAYS}
        if any(f1.values()):  # below the threshold, the mean F1 still tells the ways apart
            c["mean_f1"] = {w: round(sum(v) / len(v), 4) for w, v in f1.items() if v}
        return c

    docs: dict[str, list[dict]] = {d: [] for d in documents}
    for r in graded:
        docs.setdefault(r["doc_id"] or "", []).append(r)
    overall = counts(list(graded))
    return {"overall": overall, "line": summary_line(overall, noun),
            "documents": {d: {**counts(rows), "line": summary_line(counts(rows), noun)} for d, rows in docs.items()},
            "rules": dict(Counter(r["rule"] for r in graded))}


def summary_line(c: dict, noun: str = "held-out facts") -> str:
    """``recalls N of M held-out facts (base K, with the passage T)``; a way not asked is left out.

    Args:
        c: counts as :func:`summarise` gives them.
        noun: what is counted.

    Returns:
        The line.
    """
    if not c["questions"]:
        return f"no {noun} to ask"
    extra = [f"base {c['base']}"]
    if c.get("passage") is not None:
        asked = c.get("passage_asked", c["questions"])
        extra.append(f"with the passage {c['passage']}" + (f" of {asked}" if asked != c["questions"] else ""))
    return f"recalls {c['adapter']} of {c['questions']} {noun} ({', '.join(extra)})"


def write_recall(out: Path, summary: dict, rows: Sequence[dict]) -> None:
    """``recall.json`` (the summary) and ``recall_answers.jsonl`` (one graded row per answer), atomically."""
    write_jsonl(Path(out) / ANSWERS_FILE, rows)
    write_json(Path(out) / RECALL_FILE, summary)


def recall(gens: Generators, cases: Sequence[dict], params, *, judge=None, judge_name: str | None = None,
           threshold: float = F1_THRESHOLD, noun: str = "held-out facts", documents: Sequence[str] = ()
           ) -> tuple[dict, list[dict]]:
    """Ask ``cases`` three ways, grade and summarise.

    Args:
        gens: the generators.
        cases: as :func:`ask_ways` reads them.
        params: the sampling parameters of the answers.
        judge: a judge generator (rule 2), or None.
        judge_name: the judge's name, for the summary.
        threshold: rule 3's F1 threshold.
        noun: what is counted, for the summary line.
        documents: documents the summary lists even without a question about them.

    Returns:
        ``(summary, graded rows)``: the summary as :func:`summarise` gives it plus the grading's
        settings (``threshold``, ``judge``, ``params``).
    """
    graded = grade(ask_ways(gens, cases, params), judge, threshold)
    summary = summarise(graded, noun, documents)
    summary.update(threshold=threshold, judge=judge_name, params=params.as_dict(),
                   ways=dict(WAY_NAMES))
    return summary, graded
