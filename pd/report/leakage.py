"""Leakage audit: how close the generated training questions come to the test questions.

Prompt distillation (and SFT) train on questions a model wrote about the same passages the
test asks about; a training question that restates a test question makes the test a recall
of a trained answer. For each test question of an experiment's dataset this module finds
its nearest generated training question and reports, per dataset, the share at or above a
threshold, the closest pairs, and each cell's accuracy with those test questions removed
(a view, :mod:`pd.report.views`; the table keeps every question). No model is loaded.

Similarity (:func:`similarity`) is token overlap of *content-word sets*: the words of
:func:`pd.text.words` (NFKC, case-folded letter-and-digit runs) without its stopwords
(articles, prepositions, auxiliaries, pronouns, question words), as a set. Measures
(:data:`MEASURES`):

- ``jaccard`` (the default, :data:`DEFAULT_MEASURE`): ``|T ∩ Q| / |T ∪ Q|`` of the test
  question's set T and the training question's set Q; 1 for the same content words.
- ``containment``: ``|T ∩ Q| / |T|``, the share of the test question's content words the
  training question contains (ties broken by Jaccard).

A test question counts as leaked when its nearest training question scores at or above the
threshold (:data:`DEFAULT_THRESHOLD`, 0.5; ``pd report --leakage-threshold``). With no stemming
and no question words, "When did X open the plant?" and "Where did X open the plant?" score 1:
the audit errs towards flagging, and its "accuracy with those removed" is the check.

Where the questions come from (read from the files the manifest names):

- test questions: the ``question`` of the cells' evaluation rows (``evaluate`` in the
  manifest; the closed-book question the model was asked), per dataset;
- training questions: per trained cell, the answers file its adapter trained on (the
  adapter's ``pd_meta.json`` ``workflow_spec.answers``) without the questions held out of
  training (:func:`pd.train.rows.split_heldout`, as the adapter job splits them); pooled over
  every adapter of the dataset in the experiment (all seeds, methods, question counts), so
  a test question is flagged if any adapter's data comes close. A quintile subset's adapter
  is counted with all its answer rows (a superset of what it trained on). Methods that
  train on the passages (UFT) have no generated questions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pd.errors import ConfigError
from pd.io import read_json, read_jsonl
from pd.report.aggregate import CellRecord, Group
from pd.report.labels import label_for
from pd.report.tables import Table
from pd.report.views import BINOMIAL_NOTE, View, ViewCell, ViewTable, accuracy_without, cell_rows, lay_out
from pd.text import words

MEASURES = ("jaccard", "containment")
DEFAULT_MEASURE = "jaccard"
DEFAULT_THRESHOLD = 0.5
N_PAIRS = 3  # closest pairs shown per dataset
NAME = "leakage"
META_FILE = "pd_meta.json"


def content_words(text: str) -> frozenset[str]:
    """The content-word set of a question: :func:`pd.text.words` without stopwords, as a set.

    Args:
        text: a question.

    Returns:
        Its folded content words.
    """
    return frozenset(words(text, stopwords=True))


def check_setting(threshold: float, measure: str = DEFAULT_MEASURE) -> None:
    """Refuse a threshold outside (0, 1] or an unknown measure.

    Args:
        threshold: the leakage threshold.
        measure: the similarity measure.

    Raises:
        ConfigError: naming the setting and its allowed values.
    """
    if measure not in MEASURES:
        raise ConfigError(f"leakage measure {measure!r} is not known; allowed: {', '.join(MEASURES)}")
    if not (isinstance(threshold, (int, float)) and 0 < threshold <= 1):
        raise ConfigError(f"leakage threshold {threshold!r} is not allowed; allowed: a number in (0, 1]")


def similarity(test: Iterable[str], train: Iterable[str], measure: str = DEFAULT_MEASURE) -> float:
    """Token overlap of two content-word sets (:data:`MEASURES`); 0 when the test set is empty.

    Args:
        test: the test question's content words.
        train: the training question's content words.
        measure: ``jaccard`` or ``containment`` (of the test words in the training question).

    Returns:
        The similarity in [0, 1].

    Raises:
        ConfigError: an unknown measure.
    """
    check_setting(1.0, measure)
    a, b = set(test), set(train)
    if not a:
        return 0.0
    inter = len(a & b)
    return inter / len(a | b) if measure == "jaccard" else inter / len(a)


@dataclass(frozen=True)
class Match:
    """A test question and its nearest training question (None when none shares a content word)."""

    item_id: str
    test_question: str
    train_question: str | None
    similarity: float


class TrainingIndex:
    """The training questions' content-word sets with an inverted index, for nearest-question search.

    Each search counts, for every training question sharing a word with the query, the shared
    words (one pass over the query words' postings), then computes the measure for all of them
    at once; equal to :func:`similarity` against every training question, without the loop.
    """

    def __init__(self, questions: Iterable[str]):
        """Index the distinct questions (repeated texts once, first order kept).

        Args:
            questions: the training questions.
        """
        self.questions = list(dict.fromkeys(questions))
        sets = [content_words(q) for q in self.questions]
        self.sizes = np.array([len(s) for s in sets], dtype=np.float64)
        postings: dict[str, list[int]] = {}
        for j, s in enumerate(sets):
            for w in s:
                postings.setdefault(w, []).append(j)
        self.postings = {w: np.asarray(js, dtype=np.int64) for w, js in postings.items()}

    def __len__(self) -> int:
        return len(self.questions)

    def nearest(self, question: str, measure: str = DEFAULT_MEASURE) -> tuple[int | None, float]:
        """The most similar training question (its index) and the similarity.

        Ties go to the higher Jaccard (matters for ``containment``), then to the first indexed.

        Args:
            question: a test question.
            measure: the similarity measure.

        Returns:
            ``(index, similarity)``, or ``(None, 0.0)`` when no training question shares a content word.
        """
        a = content_words(question)
        hits = [self.postings[w] for w in a if w in self.postings]
        if not hits:
            return None, 0.0
        inter = np.bincount(np.concatenate(hits), minlength=len(self.questions)).astype(np.float64)
        jac = inter / (len(a) + self.sizes - inter)
        score = jac if measure == "jaccard" else inter / len(a)
        best = score.max()
        tied = np.flatnonzero(score >= best - 1e-12)
        j = int(tied[np.argmax(jac[tied])])
        return j, float(score[j])


@dataclass
class DatasetAudit:
    """One dataset's audit: every test question's nearest training question and which are leaked."""

    dataset: Any
    measure: str
    threshold: float
    matches: list[Match]
    n_train: int
    sources: list[str] = field(default_factory=list)  # the answer files the training questions came from

    @property
    def flagged(self) -> set[str]:
        """Test question ids whose nearest training question scores at or above the threshold."""
        return {m.item_id for m in self.matches if m.similarity >= self.threshold}

    @property
    def share(self) -> float:
        """The flagged share of the test questions (NaN without test questions)."""
        return len(self.flagged) / len(self.matches) if self.matches else float("nan")

    def closest(self, k: int = N_PAIRS) -> list[Match]:
        """The ``k`` most similar pairs, most similar first (ties by question id).

        Args:
            k: how many.

        Returns:
            Up to ``k`` matches that have a training question.
        """
        ranked = sorted((m for m in self.matches if m.train_question is not None),
                        key=lambda m: (-m.similarity, m.item_id))
        return ranked[:k]


def audit_questions(test: Mapping[str, str], train: Iterable[str] | TrainingIndex, *, dataset: Any = None,
                    threshold: float = DEFAULT_THRESHOLD, measure: str = DEFAULT_MEASURE,
                    sources: Sequence[str] = ()) -> DatasetAudit:
    """Each test question's nearest training question, and which reach the threshold.

    Args:
        test: test question id -> question text.
        train: the training questions (or their index).
        dataset: the dataset's key, for the report.
        threshold: a test question is flagged at or above this similarity.
        measure: the similarity measure (:data:`MEASURES`).
        sources: the files the training questions came from, for the report.

    Returns:
        The audit, matches in the order of ``test``.

    Raises:
        ConfigError: a threshold outside (0, 1] or an unknown measure.
    """
    check_setting(threshold, measure)
    index = train if isinstance(train, TrainingIndex) else TrainingIndex(train)
    matches = []
    for item, q in test.items():
        j, s = index.nearest(q, measure)
        matches.append(Match(item, q, index.questions[j] if j is not None else None, s))
    return DatasetAudit(dataset, measure, threshold, matches, len(index), list(sources))


# --------------------------------------------------------------------------- files


def test_questions(records: Iterable[CellRecord]) -> dict[str, str]:
    """Test question id -> question, from the records' evaluation rows (first text seen per id).

    Args:
        records: cells of one dataset (those without an evaluation file, or rows without
            ``question``, add nothing).

    Returns:
        The questions, in the order first seen.
    """
    out: dict[str, str] = {}
    seen: set[str] = set()
    for rec in records:
        path = rec.extra.get("evaluate")
        if not path or path in seen or not Path(path).is_file():
            continue
        seen.add(path)
        for row in read_jsonl(path):
            if isinstance(row.get("question"), str) and "item_id" in row:
                out.setdefault(str(row["item_id"]), row["question"])
    return out


def adapter_job_spec(rec: CellRecord) -> dict | None:
    """The adapter job's specification a trained cell's ``pd_meta.json`` records (``workflow_spec``).

    Args:
        rec: a cell record.

    Returns:
        The specification, or None (no adapter, no metadata, or metadata written before it was recorded).
    """
    meta = rec.meta.get("adapter")
    spec = meta.get("workflow_spec") if isinstance(meta, Mapping) else None
    if not isinstance(spec, Mapping):  # the manifest carried other metadata: the adapter's own file
        adapter = rec.extra.get("adapter")
        path = Path(adapter) / META_FILE if adapter else None
        meta = read_json(path) if path is not None and path.is_file() else None
        spec = meta.get("workflow_spec") if isinstance(meta, Mapping) else None
    return dict(spec) if isinstance(spec, Mapping) else None


def answers_file(rec: CellRecord) -> Path | None:
    """The answers file a trained cell's adapter trained on, found on disk.

    The adapter's specification names it as the workflow did (relative to the folder Snakemake
    ran in); it is looked up as given when absolute, among the record's upstream ``jobs``, then
    below each folder above the adapter's.

    Args:
        rec: a cell record.

    Returns:
        The file, or None (no adapter, a method without generated questions, or not on disk).
    """
    spec = adapter_job_spec(rec)
    name = spec.get("answers") if spec else None
    if not name:
        return None
    p = Path(name)
    if p.is_absolute():
        return p if p.is_file() else None
    tail = p.as_posix()
    for job in rec.extra.get("jobs") or []:
        j = Path(str(job)).as_posix()
        if (j == tail or j.endswith("/" + tail)) and Path(j).is_file():
            return Path(j)
    adapter = rec.extra.get("adapter")
    if adapter:
        for folder in Path(os.path.abspath(adapter)).parents:
            if (folder / p).is_file():
                return folder / p
    return p if p.is_file() else None


def training_questions(path: str | os.PathLike, heldout_fraction: float = 0.0) -> list[str]:
    """The distinct questions of an answers file that training used (held-out questions left out).

    Args:
        path: the answers file (rows with ``question`` and ``question_id`` or ``id``).
        heldout_fraction: the adapter's ``training.heldout_fraction`` (0: none held out).

    Returns:
        The questions, one per question id, in file order.
    """
    from pd.train.rows import split_heldout

    rows = [r for r in read_jsonl(path) if isinstance(r.get("question"), str)]
    train, _ = split_heldout(rows, heldout_fraction)
    by_id: dict[str, str] = {}
    for r in train:
        by_id.setdefault(str(r.get("question_id", r.get("id"))), r["question"])
    return list(by_id.values())


def audit_experiment(records: Sequence[CellRecord], *, threshold: float = DEFAULT_THRESHOLD,
                     measure: str = DEFAULT_MEASURE) -> tuple[dict[Any, DatasetAudit], dict[Any, str]]:
    """The audit of each dataset of an experiment's cells.

    Args:
        records: the experiment's cell records.
        threshold: the leakage threshold.
        measure: the similarity measure.

    Returns:
        ``(dataset -> audit, dataset -> why it has none)``: a dataset is audited when its
        evaluation rows carry the questions and some adapter trained on generated questions.

    Raises:
        ConfigError: a threshold outside (0, 1] or an unknown measure.
    """
    check_setting(threshold, measure)
    by_dataset: dict[Any, list[CellRecord]] = {}
    for rec in records:
        by_dataset.setdefault(rec.axes.get("dataset"), []).append(rec)
    audits, why = {}, {}
    for ds, recs in by_dataset.items():
        test = test_questions(recs)
        sources: dict[str, float] = {}
        for rec in recs:
            path = answers_file(rec)
            if path is not None:
                spec = adapter_job_spec(rec) or {}
                frac = float((spec.get("training") or {}).get("heldout_fraction", 0.0) or 0.0)
                sources.setdefault(str(path), frac)
        if not test:
            why[ds] = "its evaluation rows carry no question text"
        elif not sources:
            why[ds] = "no adapter of this experiment trained on generated questions of it"
        else:
            train = [q for path, frac in sources.items() for q in training_questions(path, frac)]
            audits[ds] = audit_questions(test, train, dataset=ds, threshold=threshold, measure=measure,
                                         sources=list(sources))
    return audits, why


# --------------------------------------------------------------------------- the view


def leakage_view(table: Table, records: Sequence[CellRecord], *, threshold: float = DEFAULT_THRESHOLD,
                 measure: str = DEFAULT_MEASURE, display_root: str | None = None) -> View:
    """The audit of the table's datasets and each cell's accuracy with the flagged test questions removed.

    Args:
        table: the built accuracy table.
        records: the experiment's cell records.
        threshold: the leakage threshold.
        measure: the similarity measure.
        display_root: file paths in the data are shown relative to it (the report folder).

    Returns:
        The view: a table per dataset (test and training questions, the share flagged), the closest
        pairs, the cells' accuracy without the flagged questions; ``data`` holds all of it.

    Raises:
        ConfigError: a threshold outside (0, 1] or an unknown measure.
    """
    audits, why = audit_experiment(records, threshold=threshold, measure=measure)
    spec = table.spec

    def cell_for(g: Group) -> ViewCell:
        a = audits.get(g.axes.get("dataset"))
        if a is None:
            return ViewCell(g)
        value = accuracy_without(g, a.flagged)
        return ViewCell(g, value, f"({value.removed} removed)")

    view = View(NAME, f"Leakage audit: accuracy without the test questions a training question comes close to "
                      f"({measure} ≥ {threshold:g})")
    view.blocks = lay_out(table, cell_for) if audits else []  # nothing audited: the notes say why, no grid
    shown = [d for d in dict.fromkeys(c.group.axes.get("dataset") for b in table.blocks for r in b.rows
                                      for c in r.cells if c.group is not None)]

    def ds_label(d: Any) -> str:
        return label_for(spec, "dataset", d)

    if audits:
        view.tables.append(ViewTable(
            "Per dataset: each test question's nearest generated training question",
            ["Dataset", "Test questions", "Training questions", f"At or above {threshold:g}"],
            [[ds_label(d), str(len(a.matches)), str(a.n_train),
              f"{len(a.flagged)}/{len(a.matches)} ({100 * a.share:.1f}%)"] for d, a in audits.items()]))
        view.tables.append(ViewTable(
            f"The closest pairs (up to {N_PAIRS} per dataset)",
            ["Dataset", "Similarity", "Test question", "Nearest training question"],
            [[ds_label(d), f"{m.similarity:.2f}", m.test_question, m.train_question or ""]
             for d, a in audits.items() for m in a.closest(N_PAIRS)]))
    described = {"jaccard": "shared content words / content words of either question (Jaccard)",
                 "containment": "shared content words / the test question's content words (containment)"}[measure]
    view.notes = [("", f"Accuracy in percent without the test questions whose nearest generated training question "
                       f"has similarity ≥ {threshold:g}, mean ± 2 SE over seeds as in the table above; (k removed): "
                       f"of the cell's questions. Similarity: {described}, over each question's set of content "
                       "words (case-folded words without stopwords and question words). Training questions: those "
                       "every adapter of the dataset in this experiment trained on (held-out questions left out), "
                       "pooled. The table above keeps every question.")]
    if view.has_binomial:
        view.notes.append(BINOMIAL_NOTE)
    for d in shown:
        if d in why:
            view.notes.append(("", f"{ds_label(d)}: not audited, {why[d]}; its cells show —."))

    def rel(p: str) -> str:
        return os.path.relpath(p, display_root).replace(os.sep, "/") if display_root else p

    view.data = {"measure": measure, "threshold": threshold,
                 "datasets": [{"dataset": d, "test_questions": len(a.matches), "training_questions": a.n_train,
                               "flagged": sorted(a.flagged), "share": a.share,
                               "sources": [rel(s) for s in a.sources],
                               "closest": [{"item_id": m.item_id, "similarity": m.similarity,
                                            "test_question": m.test_question, "train_question": m.train_question}
                                           for m in a.closest(N_PAIRS)]} for d, a in audits.items()],
                 "not_audited": {str(d): w for d, w in why.items()},
                 "cells": cell_rows(table, view)}
    return view
