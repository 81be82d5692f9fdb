"""Question generation: the training questions about each passage.

The model being trained writes them from each passage (paper: 30 per test
question, i.e. a passage that m test items ask about gets 30*m; the unit is explicit
in :func:`question_targets`). Four modes:

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
beside the output (:func:`pd.io.write_with_stats`). The expert's answers to these
questions are :mod:`pd.answers`.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass

from pd.data import Dataset
from pd.errors import ConfigError, DataError
from pd.generate.base import Generator, SamplingParams
from pd.io import stable_hash
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
_PASSAGE_REF = re.compile(r"\b(the|this|that|above|given) "
                          r"(passage|text|article|paragraph|excerpt|document|context)\b", re.I)
_TAG = re.compile(r"<question>(.*?)</question>", re.I | re.S)
_OPEN = re.compile(r"<question>", re.I)


@dataclass
class QGenConfig:
    """How questions are generated (the config's ``qgen`` section); invalid values raise ConfigError."""

    mode: str = "five"
    per_item: int = 30  # questions per test item that asks about a passage (the paper's unit) ...
    per_passage: bool = False  # ... or per passage (documents without test items), as the job spec says
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
        if self.per_item < 1:
            raise ConfigError(f"qgen.per_item must be >= 1, got {self.per_item}")
        if self.max_rounds < 1:
            raise ConfigError(f"qgen.max_rounds must be >= 1, got {self.max_rounds}")

    def params(self, seed: int, n: int) -> SamplingParams:
        """Sampling parameters for one round: the mode's defaults, overridden by the fields that are set.

        Args:
            seed: the round's seed.
            n: samples per prompt.

        Returns:
            The parameters.
        """
        d = dict(MODE_DEFAULTS[self.mode])
        for k in d:
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return SamplingParams(seed=seed, n=n, **d)


# --------------------------------------------------------------------------- parsing


def normalise_question(q: str) -> str:
    """Lower-cased alphanumeric words joined by single spaces: the key duplicates are found by.

    Args:
        q: a question.

    Returns:
        The normalised text.
    """
    return " ".join(re.sub(r"[^0-9a-z]+", " ", q.lower()).split())


def check_question(q: str, examples: set[str] = frozenset()) -> str | None:
    """Why a candidate question is rejected, or None when it is acceptable.

    Args:
        q: the candidate.
        examples: normalised questions the prompt showed (echoing one is rejected).

    Returns:
        A reason (``empty``, ``contains_markup``, ``not_a_question``, ``too_short``, ``too_long``,
        ``echoed_example``, ``refers_to_passage``) or None.
    """
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
    """Normalised questions that the prompt itself shows (few-shot examples): echoing them is rejected.

    Args:
        prompt: the prompt text.

    Returns:
        The normalised questions in its ``<question>`` tags.
    """
    return {normalise_question(m) for m in _TAG.findall(prompt)}


def candidates(text: str, mode: str, prefix: str = "") -> tuple[list[str], list[str]]:
    """Raw candidate questions in one output, plus output-level rejection reasons.

    Args:
        text: the model's output.
        mode: one of :data:`MODES`.
        prefix: the question word the reply was forced to start with (prefilled modes).

    Returns:
        The candidates (whitespace collapsed) and reasons that concern the whole output
        (``unclosed_tag``, ``no_question_tags``, ``no_question``).

    Raises:
        ConfigError: an unknown mode.
    """
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

    Args:
        text: the model's output.
        mode: one of :data:`MODES`.
        prompt: the prompt (its few-shot questions may not be echoed).
        prefix: the prefilled question word, if any.
        seen: normalised questions already accepted for this passage; updated in place, so
            duplicates within and across outputs are rejected as ``duplicate``.

    Returns:
        The accepted questions and a Counter of rejection reasons.

    Raises:
        ConfigError: an unknown mode.
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


def question_targets(dataset: Dataset, per_item: int = 30, per_passage: bool = False) -> dict[str, int]:
    """Questions to generate per passage: ``per_item`` x (test items citing it), or ``per_item`` each.

    Args:
        dataset: the passages and test items.
        per_item: questions per test item that cites a passage (or per passage).
        per_passage: ``per_item`` questions for every passage, whatever cites it.

    Returns:
        ``{doc_id: count}``; per test item, only passages some item cites.

    Raises:
        DataError: not ``per_passage`` and no test item cites a passage.
    """
    if per_passage:
        return {d: per_item for d in dataset.documents}
    counts = Counter(d for it in dataset.items for d in it.doc_ids)
    targets = {d: per_item * counts[d] for d in dataset.documents if counts[d]}
    if not targets:
        raise DataError(f"dataset {dataset.name} has no test items citing its passages; "
                        "generate per_item questions per passage instead (a folder without questions does)")
    return targets


def sentences(text: str, min_words: int = 4) -> list[str]:
    """The passage's sentences (split after . ! ? before a capital or digit); short fragments join the next one.

    Args:
        text: the passage.
        min_words: a part with fewer words (or ending in an abbreviation) is joined to what follows.

    Returns:
        The sentences, whitespace collapsed.
    """
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


def question_conversation(mode: str, passage: str, cfg: QGenConfig, prefix: str = "", focus: str = "") -> list[dict]:
    """The conversation of one question-generation call.

    Args:
        mode: one of :data:`MODES`.
        passage: the passage asked about.
        cfg: the settings (Bonito's task type).
        prefix: prefilled modes: the question word the assistant's turn starts with.
        focus: ``sentence`` mode: the sentence quoted in the prompt.

    Returns:
        Messages ``{"role", "content"}``; ``raw`` for Bonito, a trailing assistant prefill for prefilled modes.
    """
    if mode == "five":
        return [{"role": "user", "content": render("qgen", passage=passage, n=PER_CALL["five"], examples=FEW_SHOT)}]
    if mode in PREFILLED:
        return [{"role": "user", "content": render(f"qgen_{mode}", passage=passage, sentence=focus)},
                {"role": "assistant", "content": prefix}]
    return [{"role": "raw", "content": render("qgen_bonito", passage=passage, task_type=cfg.bonito_task_type) + "\n"}]


def generate_questions(dataset: Dataset, generator: Generator, cfg: QGenConfig = QGenConfig()
                       ) -> tuple[list[dict], dict]:
    """Questions about each passage, in rounds until every passage has its target or the rounds run out.

    Args:
        dataset: the passages (and test items, for per-item targets).
        generator: the question writer.
        cfg: mode, targets, seed, round cap and sampling.

    Returns:
        Rows ``{"id", "doc_id", "question", "generator", "seed"}`` and the yield stats (calls, outputs cut,
        candidates, accepted, rejected by reason, surplus, shortfall per passage, rounds).

    Raises:
        DataError: no passage gets a target (see :func:`question_targets`).
    """
    targets = question_targets(dataset, cfg.per_item, cfg.per_passage)
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
                    jobs.append((d, question_conversation(cfg.mode, text, cfg, w, focus), w, 1))
            else:
                jobs.append((d, question_conversation(cfg.mode, dataset.documents[d].text, cfg), "", calls))
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
