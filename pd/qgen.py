"""Training data generation: questions about each passage, then the expert's answers.

Questions. The model being trained writes them from each passage (paper: 30 per test
question, i.e. a passage that m test items ask about gets 30*m; the unit is explicit
in :func:`question_targets`). Three modes:

- ``five`` (the paper's): a few-shot prompt asks for five trivia questions per call in
  ``<question>`` tags; T = 1.5, top-k 50, 512 new tokens.
- ``single`` (fallback for small models, which fail at the five-question format):
  one question per call, the reply forced to start with a question word drawn at
  random per call (a prefill), cut at the first ``?``.
- ``sentence`` (small models too): like ``single``, but each call also quotes one sentence
  of the passage and asks about it, the sentences taken in turn; a small model then spreads
  its questions over the whole passage instead of asking about its first line again and
  again (the duplicates that dominate ``single``'s rejections).
- ``bonito``: a Bonito-style question generator, prompted with ``<|tasktype|>`` /
  ``<|context|>`` / ``<|task|>`` as raw text; its question is the part before
  ``<|pipe|>``.

Every candidate goes through :func:`check_question`; outputs are deduplicated per
passage (normalised text), and calls repeat in rounds until each passage has its
questions or ``max_rounds`` is reached. The yield (calls, raw outputs, candidates,
accepted, rejected by reason, shortfall) is returned as a stats dict and written
beside the output.

Answers. The expert (default: the same model) answers each question with the passage
in its prompt (``expert_answer``: passage, blank line, ``---``, blank line, question);
T = 1.5 for PD data and 0.25 for SFT data (the caller's params); answers cut at the
token cap are counted. Chain-of-thought answers for SFT with distractors see the
passages :func:`pd.train.sequences.choose_context` picks, so the trainer and this
generator agree on the context without sharing state.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pd.data import Dataset
from pd.errors import ConfigError, DataError
from pd.generate.base import Generator, SamplingParams
from pd.io import stable_hash, write_json, write_jsonl
from pd.prompts import render

MODES = ("five", "single", "sentence", "bonito")

# The few-shot example for the ``five`` prompt (written for this project).
FEW_SHOT = [{
    "passage": ("The Danube is the second-longest river in Europe. It rises in the Black Forest in Germany and flows "
                "for about 2,850 kilometres through ten countries, including Austria, Hungary and Romania, before "
                "emptying into the Black Sea. Four capital cities lie on its banks: Vienna, Bratislava, Budapest and "
                "Belgrade."),
    "questions": [
        "Which river is the second-longest in Europe?",
        "In which German mountain range does the Danube rise?",
        "Into which sea does the Danube flow?",
        "Through how many countries does the Danube flow?",
        "Which four capital cities lie on the banks of the Danube?",
    ],
}]

QUESTION_WORDS = ("What", "Who", "Which", "When", "Where", "How many", "In which year", "How", "Why", "In what")

# Per-mode sampling defaults; the paper's are those of ``five``.
MODE_DEFAULTS = {
    "five": dict(temperature=1.5, top_k=50, top_p=1.0, max_new_tokens=512),
    "single": dict(temperature=0.8, top_k=50, top_p=1.0, max_new_tokens=48),
    "sentence": dict(temperature=0.8, top_k=50, top_p=1.0, max_new_tokens=48),
    "bonito": dict(temperature=1.0, top_k=0, top_p=0.95, max_new_tokens=256),
}
PER_CALL = {"five": 5, "single": 1, "sentence": 1, "bonito": 1}
_ABBREVIATION_END = re.compile(r"(?:^|\s)(?:[A-Z][a-z]{0,2}\.)+$")  # "Dr." "W." "U.S.": no sentence ends here
PREFILLED = ("single", "sentence")  # modes whose reply starts with a question word
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"\u201d\u2019)]))\s+(?=[\"\u201c\u2018(]?[A-Z0-9])")

MIN_WORDS, MAX_WORDS = 3, 40
_PASSAGE_REF = re.compile(r"\b(the|this|that|above|given) (passage|text|article|paragraph|excerpt|document|context)\b", re.I)
_TAG = re.compile(r"<question>(.*?)</question>", re.I | re.S)
_OPEN = re.compile(r"<question>", re.I)


@dataclass
class QGenConfig:
    mode: str = "five"
    per_item: int = 30  # questions per test item that asks about a passage (the paper's unit)
    per_doc: int | None = None  # instead: a fixed number per passage (documents without test items)
    seed: int = 0
    max_rounds: int = 8  # retry cap: rounds of calls before giving up on a passage
    temperature: float | None = None  # None: the mode's default
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    bonito_task_type: str = "extractive question answering"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"qgen.mode {self.mode!r}; allowed: {', '.join(MODES)}")
        if self.per_item < 1 and self.per_doc is None:
            raise ConfigError(f"qgen.per_item must be >= 1, got {self.per_item}")
        if self.per_doc is not None and self.per_doc < 1:
            raise ConfigError(f"qgen.per_doc must be >= 1 (or null), got {self.per_doc}")
        if self.max_rounds < 1:
            raise ConfigError(f"qgen.max_rounds must be >= 1, got {self.max_rounds}")

    def params(self, seed: int, n: int) -> SamplingParams:
        d = dict(MODE_DEFAULTS[self.mode])
        for k in d:
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return SamplingParams(seed=seed, n=n, **d)


# --------------------------------------------------------------------------- parsing


def normalise_question(q: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", q.lower()).split())


def check_question(q: str, examples: set[str] = frozenset()) -> str | None:
    """Why a candidate question is rejected, or None when it is acceptable."""
    if not q:
        return "empty"
    if "<" in q or ">" in q:
        return "contains_markup"
    if not q.endswith("?"):
        return "not_a_question"
    words = len(q.split())
    if words < MIN_WORDS:
        return "too_short"
    if words > MAX_WORDS:
        return "too_long"
    if normalise_question(q) in examples:
        return "echoed_example"
    if _PASSAGE_REF.search(q):
        return "refers_to_passage"
    return None


def example_questions(prompt: str) -> set[str]:
    """Normalised questions that the prompt itself shows (few-shot examples): echoing them is rejected."""
    return {normalise_question(m) for m in _TAG.findall(prompt)}


def candidates(text: str, mode: str, prefix: str = "") -> tuple[list[str], list[str]]:
    """Raw candidate questions in one output, plus output-level rejection reasons."""
    if mode == "five":
        found = [" ".join(m.split()) for m in _TAG.findall(text)]
        problems = ["unclosed_tag"] * max(0, len(_OPEN.findall(text)) - len(found))
        if not found and not problems:
            problems = ["no_question_tags"]
        return found, problems
    if mode in PREFILLED:
        if not prefix:
            body = text
        elif text[:1] in ("'", ",", "?"):  # "What" + "'s ..." / "What" + "?"
            body = prefix + text
        else:
            body = prefix + " " + text.lstrip()
        body = _TAG.sub(lambda m: m.group(1), body).strip()
        line = body.split("\n", 1)[0].strip()
        cut = line.find("?")
        return [" ".join(line[: cut + 1].split()) if cut >= 0 else " ".join(line.split())], []
    if mode == "bonito":
        head = text.split("<|pipe|>", 1)[0].replace("{{context}}", "\n")
        for line in head.splitlines():
            line = re.sub(r"^\s*(question|q)\s*[:.]\s*", "", line.strip(), flags=re.I)
            cut = line.find("?")
            if cut >= 0:
                return [" ".join(line[: cut + 1].split())], []
        return [], ["no_question"]
    raise ConfigError(f"qgen mode {mode!r}; allowed: {', '.join(MODES)}")


def parse_output(text: str, mode: str, prompt: str = "", prefix: str = "",
                 seen: set[str] | None = None) -> tuple[list[str], Counter]:
    """Accepted questions of one output and a count of rejections by reason.

    ``seen`` (normalised questions already accepted for this passage) is updated in place,
    so duplicates within and across outputs are rejected as ``duplicate``.
    """
    seen = set() if seen is None else seen
    examples = example_questions(prompt)
    found, problems = candidates(text, mode, prefix)
    rejected = Counter(problems)
    accepted = []
    for q in found:
        reason = check_question(q, examples)
        if reason is None and normalise_question(q) in seen:
            reason = "duplicate"
        if reason:
            rejected[reason] += 1
        else:
            seen.add(normalise_question(q))
            accepted.append(q)
    return accepted, rejected


# --------------------------------------------------------------------------- questions


def question_targets(dataset: Dataset, per_item: int = 30, per_doc: int | None = None) -> dict[str, int]:
    """Questions to generate per passage: ``per_item`` x (test items citing it), or ``per_doc`` each."""
    if per_doc is not None:
        return {d: per_doc for d in dataset.documents}
    counts = Counter(d for it in dataset.items for d in it.doc_ids)
    targets = {d: per_item * counts[d] for d in dataset.documents if counts[d]}
    if not targets:
        raise DataError(f"dataset {dataset.name} has no test items citing its passages; "
                        "set qgen.per_doc to generate a fixed number of questions per passage")
    return targets


def sentences(text: str, min_words: int = 4) -> list[str]:
    """The passage's sentences (split after . ! ? before a capital or digit); short fragments join the next one."""
    out: list[str] = []
    carry = ""
    for part in _SENTENCE_END.split(" ".join(text.split())):
        part = (carry + " " + part).strip() if carry else part.strip()
        if len(part.split()) < min_words or _ABBREVIATION_END.search(part):
            carry = part
            continue
        out.append(part)
        carry = ""
    if carry:
        if out:
            out[-1] = out[-1] + " " + carry
        else:
            out.append(carry)
    return out


def _conversation(mode: str, passage: str, cfg: QGenConfig, prefix: str = "", focus: str = "") -> list[dict]:
    if mode == "five":
        return [{"role": "user", "content": render("qgen", passage=passage, n=PER_CALL["five"], examples=FEW_SHOT)}]
    if mode in PREFILLED:
        return [{"role": "user", "content": render(f"qgen_{mode}", passage=passage, sentence=focus)},
                {"role": "assistant", "content": prefix}]
    return [{"role": "raw", "content": render("qgen_bonito", passage=passage, task_type=cfg.bonito_task_type) + "\n"}]


def generate_questions(dataset: Dataset, generator: Generator, cfg: QGenConfig = QGenConfig()
                       ) -> tuple[list[dict], dict]:
    """Rows ``{"id", "doc_id", "question", "generator", "seed"}`` and the yield stats."""
    targets = question_targets(dataset, cfg.per_item, cfg.per_doc)
    accepted: dict[str, list[str]] = {d: [] for d in targets}
    seen: dict[str, set[str]] = {d: set() for d in targets}
    rejected: Counter = Counter()
    st = dict(calls=0, outputs_cut=0, candidates=0, surplus=0, rounds=0)
    sent_turn: Counter = Counter()  # per passage: how many calls have quoted one of its sentences
    per_call = PER_CALL[cfg.mode]
    for rnd in range(cfg.max_rounds):
        need = {d: targets[d] - len(accepted[d]) for d in targets if len(accepted[d]) < targets[d]}
        if not need:
            break
        st["rounds"] += 1
        seed = int(stable_hash(["qgen", cfg.seed, rnd], 12), 16)
        # Jobs: (doc, conversation, prefix, samples). Grouped by sample count, one generate call per group.
        jobs = []
        for d, m in need.items():
            calls = math.ceil(m / per_call)
            if cfg.mode in PREFILLED:
                text = dataset.documents[d].text
                sents = sentences(text) if cfg.mode == "sentence" else [""]
                rng = random.Random(stable_hash(["qgen-prefix", cfg.seed, rnd, d]))
                for _ in range(calls):
                    w = rng.choice(QUESTION_WORDS)
                    focus = sents[sent_turn[d] % len(sents)]
                    sent_turn[d] += 1
                    jobs.append((d, _conversation(cfg.mode, text, cfg, w, focus), w, 1))
            else:
                jobs.append((d, _conversation(cfg.mode, dataset.documents[d].text, cfg), "", calls))
        for n in sorted({j[3] for j in jobs}):
            group = [j for j in jobs if j[3] == n]
            outs = generator.generate([j[1] for j in group], cfg.params(seed, n))
            for (d, conv, prefix, _), comps in zip(group, outs):
                for c in comps:
                    st["calls"] += 1
                    st["outputs_cut"] += c.finish_reason == "length"
                    found, _ = candidates(c.text, cfg.mode, prefix)
                    st["candidates"] += len(found)
                    got, rej = parse_output(c.text, cfg.mode, conv[0]["content"], prefix, seen[d])
                    rejected.update(rej)
                    room = targets[d] - len(accepted[d])
                    accepted[d].extend(got[:room])
                    st["surplus"] += max(0, len(got) - room)
    rows = [{"id": f"{d}-q{k:03d}", "doc_id": d, "question": q, "generator": generator.name, "seed": cfg.seed}
            for d in targets for k, q in enumerate(accepted[d])]
    shortfall = {d: targets[d] - len(accepted[d]) for d in targets if len(accepted[d]) < targets[d]}
    stats = dict(st, mode=cfg.mode, generator=generator.name, config=asdict(cfg), target=sum(targets.values()),
                 accepted=len(rows), rejected=dict(sorted(rejected.items())), rejected_total=sum(rejected.values()),
                 shortfall=shortfall, shortfall_total=sum(shortfall.values()),
                 yield_per_call=round(len(rows) / st["calls"], 4) if st["calls"] else 0.0)
    return rows, stats


def stats_path(path: str | os.PathLike) -> Path:
    """Where the stats of an output JSONL go: ``x.jsonl`` -> ``x.stats.json``."""
    p = Path(path)
    return p.with_name((p.name[:-6] if p.name.endswith(".jsonl") else p.name) + ".stats.json")


def write_with_stats(path: str | os.PathLike, rows: list[dict], stats: dict) -> None:
    write_jsonl(path, rows)
    write_json(stats_path(path), stats)


# --------------------------------------------------------------------------- answers


def _question_rows(rows: list[dict], dataset: Dataset) -> None:
    for n, r in enumerate(rows):
        for key in ("id", "doc_id", "question"):
            if key not in r:
                raise DataError(f"question row {n + 1}: missing {key!r} (rows need id, doc_id, question)")
        if r["doc_id"] not in dataset.documents:
            raise DataError(f"question row {n + 1} (id {r['id']}): unknown doc_id {r['doc_id']!r} in dataset {dataset.name}")


def _answer_rows(rows, outs, expert: str, params: SamplingParams, extra=None) -> tuple[list[dict], dict]:
    answers = []
    for i, (r, comps) in enumerate(zip(rows, outs)):
        for j, c in enumerate(comps):
            row = {"id": r["id"] if len(comps) == 1 else f"{r['id']}-a{j}", "question_id": r["id"], "doc_id": r["doc_id"],
                   "question": r["question"], "answer": c.text.strip(), "finish_reason": c.finish_reason,
                   "n_tokens": c.n_tokens, "expert": expert, "temperature": params.temperature}
            answers.append(dict(row, **(extra[i] if extra else {})))
    cut = sum(a["finish_reason"] == "length" for a in answers)
    stats = {"answers": len(answers), "cut_at_max_tokens": cut, "max_new_tokens": params.max_new_tokens,
             "mean_tokens": round(sum(a["n_tokens"] for a in answers) / len(answers), 2) if answers else 0.0,
             "empty": sum(not a["answer"] for a in answers), "expert": expert, "params": params.as_dict()}
    return answers, stats


def generate_answers(question_rows: list[dict], dataset: Dataset, generator: Generator, params: SamplingParams,
                     expert: str | None = None) -> tuple[list[dict], dict]:
    """The expert's answers with the passage in its prompt (PD: T=1.5; SFT: T=0.25; max 512 tokens)."""
    _question_rows(question_rows, dataset)
    convs = [[{"role": "user", "content": render("expert_answer", passage=dataset.documents[r["doc_id"]].text,
                                                 question=r["question"])}] for r in question_rows]
    outs = generator.generate(convs, params)
    return _answer_rows(question_rows, outs, expert or generator.name, params)


def generate_cot_answers(question_rows: list[dict], dataset: Dataset, generator: Generator, params: SamplingParams,
                         expert: str | None = None, *, seed: int = 0, distractors: int = 2,
                         gold_drop_prob: float = 0.4) -> tuple[list[dict], dict]:
    """Chain-of-thought answers for SFT with distractors; rows carry ``context_doc_ids`` (in prompt order)."""
    from pd.train.sequences import choose_context

    _question_rows(question_rows, dataset)
    all_docs = list(dataset.documents)
    contexts = [choose_context(str(r["id"]), r["doc_id"], all_docs, seed=seed, distractors=distractors,
                               gold_drop_prob=gold_drop_prob) for r in question_rows]
    convs = [[{"role": "user", "content": render("cot_answer", passages=[dataset.documents[d].text for d in ctx],
                                                 question=r["question"])}] for r, ctx in zip(question_rows, contexts)]
    outs = generator.generate(convs, params)
    extra = [{"context_doc_ids": ctx, "gold_in_context": r["doc_id"] in ctx} for r, ctx in zip(question_rows, contexts)]
    answers, stats = _answer_rows(question_rows, outs, expert or generator.name, params, extra)
    stats.update(gold_in_context=sum(e["gold_in_context"] for e in extra), seed=seed, distractors=distractors,
                 gold_drop_prob=gold_drop_prob)
    return answers, stats


# --------------------------------------------------------------------------- rewriting


def rewrite_questions(dataset: Dataset, generator: Generator,
                      params: SamplingParams = SamplingParams(temperature=0, max_new_tokens=96)) -> tuple[list[dict], dict]:
    """Make each test question understandable without its passage (what the paper did to its test set).

    Rows ``{"item_id", "question", "rewritten", "ok"}``; when the output has no usable
    ``<question>`` tag the original question is kept and ``ok`` is false.
    """
    items = [it for it in dataset.items if it.doc_ids]
    convs = [[{"role": "user", "content": render("rewrite_question", passage="\n\n".join(
        dataset.documents[d].text for d in it.doc_ids), question=it.question)}] for it in items]
    outs = generator.generate(convs, params)
    rows = []
    for it, comps in zip(items, outs):
        found = [" ".join(m.split()) for m in _TAG.findall(comps[0].text)]
        ok = bool(found) and check_question(found[0]) is None
        rows.append({"item_id": it.id, "question": it.question, "rewritten": found[0] if ok else it.question, "ok": ok,
                     "raw": comps[0].text})
    return rows, {"items": len(rows), "rewritten": sum(r["ok"] for r in rows), "generator": generator.name}
