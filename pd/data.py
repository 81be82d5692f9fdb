"""Datasets as one record model: Documents to inject and TestItems to ask about them.

Every loader returns a :class:`Dataset`; nothing downstream knows which file format the
data came from. Ids are stable across runs (derived from file positions or paths), so
every per-sample row written later can be traced back to its source line.
"""

from __future__ import annotations

import ast
import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pd.errors import DataError
from pd.io import read_json, read_text
from pd.passages import document_passages
from pd.question_rows import read_question_rows

REPO_ROOT = Path(__file__).resolve().parent.parent
SQUADSHIFTS_DIR = REPO_ROOT / "data" / "squadshifts-pd"
SQUADSHIFTS_SUBSETS = ("amazon", "new_wiki", "nyt", "reddit")


@dataclass(frozen=True)
class Document:
    """A passage to inject (and to retrieve): a stable id, its text and an optional title."""

    id: str
    text: str
    title: str = ""


@dataclass(frozen=True)
class TestItem:
    """One evaluation question.

    ``question`` is the original (it may lean on its passage: "How old was he?");
    ``rewritten`` is the version understandable without the passage, which is what the
    paper asks closed-book. ``doc_ids`` are the gold passages.
    """

    __test__ = False  # not a pytest class

    id: str
    question: str
    answers: tuple[str, ...]
    doc_ids: tuple[str, ...]
    rewritten: str = ""

    @property
    def closed_book_question(self) -> str:
        """The question asked without the passage: the rewritten one when there is one."""
        return self.rewritten or self.question


@dataclass
class Dataset:
    """Documents by id, the test items that ask about them, and where they came from (``meta``)."""

    name: str
    documents: dict[str, Document]
    items: list[TestItem]
    meta: dict[str, Any] = field(default_factory=dict)

    def select_passages(self, count: int | None = None, offset: int = 0) -> "Dataset":
        """Keep the items whose gold passages are all among passages [offset, offset+count).

        Passages are ordered by first appearance, so slices are stable; a tuning slice
        and an evaluation slice of the same dataset can be taken without overlap.

        Args:
            count: passages kept (None: all from ``offset`` on).
            offset: passages skipped first.

        Returns:
            A new dataset with those passages and the items they fully answer.
        """
        order = list(self.documents)
        chosen = order[offset : None if count is None else offset + count]
        keep = set(chosen)
        items = [it for it in self.items if it.doc_ids and all(d in keep for d in it.doc_ids)]
        docs = {d: self.documents[d] for d in chosen}
        meta = dict(self.meta, passage_offset=offset, passage_count=len(chosen))
        return Dataset(self.name, docs, items, meta)

    def head(self, limit: int | None) -> "Dataset":
        """The first ``limit`` items and only the documents they (or distractors) need.

        Args:
            limit: items kept (None, or at least the item count: the dataset itself).

        Returns:
            The smaller dataset (``meta["limit"]`` records the limit).
        """
        if limit is None or limit >= len(self.items):
            return self
        items = self.items[:limit]
        context = self.meta.get("context_doc_ids", {})
        used = {d for it in items for d in (*it.doc_ids, *context.get(it.id, ()))}
        docs = {k: v for k, v in self.documents.items() if k in used}
        return Dataset(self.name, docs, items, dict(self.meta, limit=limit))


# --------------------------------------------------------------------------- SQuADShifts


def parse_squadshifts_line(line: str, where: str = "") -> tuple[str, list[str], str]:
    """Split ``question;['answer', ...];context`` (unquoted, the paper's format).

    The first ``;`` ends the question; the answer list is a Python literal ending at the
    first ``];``; the rest, which may itself contain ``;``, is the passage.

    Args:
        line: one line of a SQuADShifts CSV.
        where: names the file and line in an error.

    Returns:
        The question, the answers, the passage.

    Raises:
        DataError: the line does not have that shape, the answers are not a list of strings,
            or the question or passage is empty.
    """
    line = line.rstrip("\r\n")
    q_end = line.find(";")
    a_end = line.find("];", q_end + 1)
    if q_end < 0 or a_end < 0 or line[q_end + 1 : q_end + 2] != "[":
        raise DataError(f"{where}: expected 'question;[answers];passage', got {line[:80]!r}")
    question = line[:q_end].strip()
    try:
        answers = ast.literal_eval(line[q_end + 1 : a_end + 1])
    except (ValueError, SyntaxError):
        literal = line[q_end + 1 : a_end + 1][:80]
        raise DataError(f"{where}: the answer list is not a Python list literal: {literal!r}") from None
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise DataError(f"{where}: the answer list must hold strings")
    context = line[a_end + 2 :].strip()
    if not question or not context:
        raise DataError(f"{where}: empty question or passage")
    return question, answers, context


def unquote_csv_line(line: str) -> str:
    """Undo the CSV quoting a few rewritten-question lines carry (``"..""..""..."``).

    Args:
        line: one line of a ``*_filtered.csv``.

    Returns:
        The line without its outer quotes and with doubled quotes halved (unquoted lines unchanged).
    """
    line = line.rstrip("\r\n")
    if line.startswith('"'):
        row = next(csv.reader(io.StringIO(line)))
        return ",".join(row)
    return line


def load_squadshifts(subset: str, root: str | os.PathLike | None = None, limit: int | None = None) -> Dataset:
    """One SQuADShifts subset as the paper used it: ``<subset>.csv`` and its rewritten questions.

    Args:
        subset: one of :data:`SQUADSHIFTS_SUBSETS`.
        root: the folder holding the files (default: the repository's data/squadshifts-pd).
        limit: read only the first ``limit`` lines.

    Returns:
        Items ``<subset>-q<line>``; passages (deduplicated by text) ``<subset>-p<n>`` in order of first use.

    Raises:
        DataError: an unknown subset, a missing or non-UTF-8 file, misaligned files or a malformed line.
    """
    if subset not in SQUADSHIFTS_SUBSETS:
        raise DataError(f"unknown SQuADShifts subset {subset!r}; allowed: {', '.join(SQUADSHIFTS_SUBSETS)}")
    root = Path(root) if root else SQUADSHIFTS_DIR
    main, rewritten_file = root / f"{subset}.csv", root / f"{subset}_filtered.csv"
    for p in (main, rewritten_file):
        if not p.is_file():
            raise DataError(
                f"SQuADShifts file {p} is missing. The repository ships these files in data/squadshifts-pd/; "
                "restore them with `git checkout -- data/` or point the dataset's `root` at a folder holding them."
            )
    lines = read_text(main).splitlines()
    rewrites = read_text(rewritten_file).splitlines()
    if len(rewrites) != len(lines):
        raise DataError(f"{rewritten_file} has {len(rewrites)} lines but {main} has {len(lines)}; "
                        "they must align line by line")
    docs: dict[str, Document] = {}
    by_text: dict[str, str] = {}
    items: list[TestItem] = []
    for i, (line, rw) in enumerate(zip(lines, rewrites)):
        if limit is not None and i >= limit:
            break
        question, answers, context = parse_squadshifts_line(line, where=f"{main}:{i + 1}")
        doc_id = by_text.get(context)
        if doc_id is None:
            doc_id = f"{subset}-p{len(docs):04d}"
            by_text[context] = doc_id
            docs[doc_id] = Document(doc_id, context)
        items.append(TestItem(f"{subset}-q{i:04d}", question, tuple(answers), (doc_id,), unquote_csv_line(rw).strip()))
    return Dataset(f"squadshifts-{subset}", docs, items, {"source": str(main), "subset": subset})


# --------------------------------------------------------------------------- the hub


def load_hub_dataset(repo: str, name: str | None = None, *, split: str, offline_hint: str):
    """A dataset from the Hugging Face hub through ``datasets``.

    Every failure (package missing, offline, gated, not found) becomes one DataError that
    ends with ``offline_hint``: how to do without the hub.

    Args:
        repo: the hub id.
        name: the dataset's configuration, if any.
        split: the split (slicing syntax allowed).
        offline_hint: how to do without the hub, appended to every error.

    Returns:
        The ``datasets.Dataset``.

    Raises:
        DataError: the package is missing or the dataset cannot be loaded.
    """
    try:
        import datasets  # type: ignore
    except ImportError:
        raise DataError(f"loading {repo} from the hub needs the `datasets` package (pip install datasets); "
                        f"{offline_hint}") from None
    try:
        return datasets.load_dataset(repo, name, split=split)
    except Exception as err:  # the hub client raises many types; all mean "not available"
        raise DataError(f"{repo} could not be loaded from the hub ({type(err).__name__}: {err}); "
                        f"{offline_hint}") from None


# --------------------------------------------------------------------------- HotpotQA


def _hotpot_paragraphs(example: dict) -> list[tuple[str, str]]:
    """(title, text) pairs from either the official JSON or the hub's columnar layout."""
    ctx = example["context"]
    if isinstance(ctx, dict):  # hub: {"title": [...], "sentences": [[...], ...]}
        pairs = zip(ctx["title"], ctx["sentences"])
    else:  # official: [[title, [sentences]], ...]
        pairs = ((c[0], c[1]) for c in ctx)
    return [(title, "".join(sents).strip()) for title, sents in pairs]


def _hotpot_support_titles(example: dict) -> list[str]:
    sf = example.get("supporting_facts", [])
    titles = sf["title"] if isinstance(sf, dict) else [s[0] for s in sf]
    return list(dict.fromkeys(titles))


def hotpotqa_from_examples(examples: Iterable[dict], limit: int | None = None, name: str = "hotpotqa") -> Dataset:
    """Documents are the distinct paragraphs (by title) of the items' ten-paragraph contexts.

    Args:
        examples: HotpotQA examples, official or hub layout.
        limit: use only the first ``limit`` examples.
        name: the dataset's name.

    Returns:
        The dataset; ``meta["context_doc_ids"]`` lists each item's ten paragraphs (its RAG corpus).
    """
    docs: dict[str, Document] = {}
    by_title: dict[str, str] = {}
    items: list[TestItem] = []
    context_ids: dict[str, list[str]] = {}
    for n, ex in enumerate(examples):
        if limit is not None and n >= limit:
            break
        ids = []
        for title, text in _hotpot_paragraphs(ex):
            doc_id = by_title.get(title)
            if doc_id is None:
                doc_id = f"hotpot-p{len(docs):05d}"
                by_title[title] = doc_id
                docs[doc_id] = Document(doc_id, f"{title}\n{text}", title)
            ids.append(doc_id)
        gold = [by_title[t] for t in _hotpot_support_titles(ex) if t in by_title]
        item_id = str(ex.get("_id") or ex.get("id") or f"hotpot-q{n:05d}")
        context_ids[item_id] = ids
        items.append(TestItem(item_id, ex["question"], (ex["answer"],), tuple(gold), ex["question"]))
    return Dataset(name, docs, items, {"context_doc_ids": context_ids})


def load_hotpotqa(path: str | os.PathLike | None = None, limit: int | None = None) -> Dataset:
    """HotpotQA distractor validation: a local official-format JSON, or the hub.

    Args:
        path: the official ``hotpot_dev_distractor_v1.json`` (None: the hub).
        limit: use only the first ``limit`` examples.

    Returns:
        The dataset (see :func:`hotpotqa_from_examples`).

    Raises:
        DataError: the file is missing, not UTF-8 or not JSON, or the hub cannot be reached.
    """
    if path:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"HotpotQA file {p} not found (expected the official hotpot_dev_distractor_v1.json format)")
        return hotpotqa_from_examples(read_json(p), limit)
    split = "validation" if limit is None else f"validation[:{limit}]"
    ds = load_hub_dataset("hotpotqa/hotpot_qa", "distractor", split=split,
                          offline_hint="offline, download hotpot_dev_distractor_v1.json on a connected machine "
                                       "and set the dataset's `path` to it")
    return hotpotqa_from_examples(ds, limit)


# --------------------------------------------------------------------------- a user's folder


DOC_SUFFIXES = (".txt", ".md")


def load_folder(folder: str | os.PathLike, questions: str | os.PathLike | None = None,
                name: str | None = None, passage_chars: int | None = None) -> Dataset:
    """A folder of ``.txt``/``.md`` documents, optionally with a questions file.

    Document ids are paths relative to the folder; documents are UTF-8 (a byte-order mark
    is dropped) and empty ones are skipped. With ``passage_chars`` a longer document becomes
    passages (:func:`split_passages`) with ids ``<path>#<offset>``: its character offset in the
    file's text. The questions file is JSONL or CSV, every row checked as
    :mod:`pd.question_rows` describes.

    Args:
        folder: the documents' folder (searched recursively).
        questions: the questions file, if any.
        name: the dataset's name (default: the folder's).
        passage_chars: the longest passage in characters (None: documents stay whole).

    Returns:
        The dataset (no items without a questions file); ``meta["passages"]`` maps each split
        passage's id to its ``source`` file and ``offset``.

    Raises:
        DataError: the folder is missing or holds no non-empty document, a document is not UTF-8,
            or the questions file is refused (a bad row, or a row naming an unknown document).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"document folder {folder} does not exist")
    docs: dict[str, Document] = {}
    passages: dict[str, dict] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in DOC_SUFFIXES:
            rel = p.relative_to(folder).as_posix()
            for pid, text, offset in document_passages(rel, read_text(p), passage_chars):
                docs[pid] = Document(pid, text, p.stem)
                if pid != rel:
                    passages[pid] = {"source": rel, "offset": offset}
    if not docs:
        raise DataError(f"no non-empty {'/'.join(DOC_SUFFIXES)} files under {folder}")
    items = [TestItem(**row) for row in read_question_rows(questions, docs)] if questions else []
    meta = {"source": str(folder), **({"passages": passages} if passages else {})}
    return Dataset(name or folder.name, docs, items, meta)


# --------------------------------------------------------------------------- from config


def load_dataset(name: str, settings: dict) -> Dataset:
    """The dataset a config entry (``datasets.<name>``, already validated) describes.

    Args:
        name: the entry's name (becomes the dataset's name).
        settings: the entry (``loader`` and the loader's settings, optional ``passages``/``passage_offset``).

    Returns:
        The dataset, sliced when the entry says so.

    Raises:
        DataError: an unknown loader, anything its loader refuses, or a slice without test questions.
    """
    loader = settings["loader"]
    if loader == "squadshifts":
        ds = load_squadshifts(settings["subset"], settings.get("root"), settings.get("limit"))
    elif loader == "hotpotqa":
        ds = load_hotpotqa(settings.get("path"), settings.get("limit"))
    elif loader == "folder":
        ds = load_folder(settings["path"], settings.get("questions"), name, settings.get("passage_chars"))
    else:
        raise DataError(f"datasets.{name}.loader: {loader!r}; allowed: squadshifts, hotpotqa, folder")
    if settings.get("passages") or settings.get("passage_offset"):
        ds = ds.select_passages(settings.get("passages"), settings.get("passage_offset", 0))
        if not ds.items and loader != "folder":
            raise DataError(f"datasets.{name}: the passage slice holds no test questions")
    ds.name = name
    return ds
