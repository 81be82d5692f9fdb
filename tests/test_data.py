"""SQuADShifts, HotpotQA and folder loaders on the real files and on files written here."""

import json
import os

import pytest

from pd.data import (
    SQUADSHIFTS_DIR,
    load_dataset,
    load_folder,
    load_hotpotqa,
    load_squadshifts,
    parse_squadshifts_line,
    unquote_csv_line,
)
from pd.errors import DataError

# The paper's Table 1: unique passages among the first 1000 items of each subset.
PAPER_PASSAGES = {"amazon": 207, "new_wiki": 203, "nyt": 188, "reddit": 209}
# Quoted lines in each *_filtered.csv, counted in the data's README.
QUOTED_LINES = {"nyt": 56, "new_wiki": 47, "reddit": 19, "amazon": 1}


@pytest.mark.parametrize("subset", sorted(PAPER_PASSAGES))
def test_squadshifts_counts_and_answers(subset):
    ds = load_squadshifts(subset)
    assert len(ds.items) == 1000
    assert len(ds.documents) == PAPER_PASSAGES[subset]
    # Gold answers occur in their passage (the data README and the paper rely on it).
    inside = sum(any(a in ds.documents[it.doc_ids[0]].text for a in it.answers) for it in ds.items)
    assert inside / len(ds.items) >= 0.95
    assert len({it.id for it in ds.items}) == 1000


@pytest.mark.parametrize("subset", sorted(QUOTED_LINES))
def test_rewritten_questions_unquoted(subset):
    raw = (SQUADSHIFTS_DIR / f"{subset}_filtered.csv").read_text(encoding="utf-8").splitlines()
    ds = load_squadshifts(subset)
    quoted = [i for i, line in enumerate(raw) if line.startswith('"')]
    assert len(quoted) == QUOTED_LINES[subset]
    for i in quoted:
        rw = ds.items[i].rewritten
        assert not rw.startswith('"') and '""' not in rw
        # Unquoting removes exactly the outer quotes and halves the doubled inner ones.
        assert rw == raw[i][1:-1].replace('""', '"')
    assert all(it.rewritten for it in ds.items)


def test_known_rewritten_question():
    ds = load_squadshifts("nyt")
    it = ds.items[18]
    assert it.rewritten == ('Who exclaimed "Holy cow, Mattingly is unbelievable" while announcing a baseball game '
                            'on television?')
    assert it.closed_book_question == it.rewritten


def test_parse_line_with_semicolons_in_passage():
    q, a, c = parse_squadshifts_line("Who? ;['A; B', \"it's\"];Text; more; text")
    assert (q, a, c) == ("Who?", ["A; B", "it's"], "Text; more; text")
    with pytest.raises(DataError, match="expected"):
        parse_squadshifts_line("no separators here")
    with pytest.raises(DataError, match="literal"):
        parse_squadshifts_line("Q;[oops];ctx")
    assert unquote_csv_line('"say ""hi"", now"') == 'say "hi", now'


def test_missing_squadshifts_file_says_how_to_fix(tmp_path):
    with pytest.raises(DataError, match="git checkout"):
        load_squadshifts("nyt", root=tmp_path)
    with pytest.raises(DataError, match="allowed: amazon"):
        load_squadshifts("imdb")


def test_passage_slices_are_disjoint_and_complete():
    full = load_squadshifts("nyt")
    a = full.select_passages(6)
    b = full.select_passages(6, offset=6)
    assert len(a.documents) == 6 and len(b.documents) == 6
    assert not set(a.documents) & set(b.documents)
    assert not {i.id for i in a.items} & {i.id for i in b.items}
    # Every item whose passage is among the first six is kept.
    expected = [it.id for it in full.items if it.doc_ids[0] in a.documents]
    assert [it.id for it in a.items] == expected


def test_load_dataset_from_config_settings():
    ds = load_dataset("demo-nyt", {"loader": "squadshifts", "subset": "nyt", "passages": 3})
    assert ds.name == "demo-nyt" and len(ds.documents) == 3 and ds.items


def _hotpot_example(i, titles, gold):
    return {"_id": f"id{i}", "question": f"Question {i}?", "answer": f"ans{i}", "type": "bridge", "level": "hard",
            "supporting_facts": [[t, 0] for t in gold],
            "context": [[t, [f"{t} sentence one. ", f"{t} sentence two."]] for t in titles]}


def test_hotpotqa_official_format(tmp_path):
    titles1 = [f"T{j}" for j in range(10)]
    titles2 = [f"T{j}" for j in range(5, 15)]
    data = [_hotpot_example(0, titles1, ["T1", "T3"]), _hotpot_example(1, titles2, ["T14", "T5"])]
    p = tmp_path / "hotpot.json"
    p.write_text(json.dumps(data))
    ds = load_hotpotqa(p)
    assert len(ds.items) == 2
    assert len(ds.documents) == 15  # paragraphs shared by title are one document
    gold0 = [ds.documents[d].title for d in ds.items[0].doc_ids]
    assert gold0 == ["T1", "T3"]
    assert ds.documents[ds.items[1].doc_ids[0]].text == "T14\nT14 sentence one. T14 sentence two."
    assert len(ds.meta["context_doc_ids"]["id1"]) == 10
    # head() keeps the distractor paragraphs of the kept items (they are the RAG corpus).
    assert len(ds.head(1).documents) == 10
    assert len(load_hotpotqa(p, limit=1).items) == 1


def test_hotpotqa_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_hotpotqa(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_hotpotqa(bad)


def test_folder_corpus_with_questions(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "a.txt").write_text("Zorblat is the capital of Quennia.")
    (tmp_path / "docs" / "sub" / "b.md").write_text("# Notes\nThe Quennian flag is teal.")
    (tmp_path / "docs" / "ignored.pdf").write_text("x")
    qj = tmp_path / "q.jsonl"
    qj.write_text(json.dumps({"question": "Capital of Quennia?", "answers": ["Zorblat"], "doc": "a.txt"}) + "\n")
    ds = load_folder(tmp_path / "docs", qj)
    assert sorted(ds.documents) == ["a.txt", "sub/b.md"]
    assert ds.items[0].answers == ("Zorblat",) and ds.items[0].doc_ids == ("a.txt",)
    qc = tmp_path / "q.csv"
    qc.write_text('question,answers,doc\n"Flag colour?",teal|blue-green,sub/b.md\n')
    ds2 = load_folder(tmp_path / "docs", qc)
    assert ds2.items[0].answers == ("teal", "blue-green")


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no non-empty"):
        load_folder(tmp_path / "empty")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("text")
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question": "Q?", "answers": ["a"], "doc": "y.txt"}) + "\n")
    with pytest.raises(DataError, match="unknown document"):
        load_folder(tmp_path / "d", q)
    c = tmp_path / "q.csv"
    c.write_text("q,a\nx,y\n")
    with pytest.raises(DataError, match="missing column"):
        load_folder(tmp_path / "d", c)


def test_hub_dataset_offline_says_how_to_do_without(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # as if the package were not installed
    with pytest.raises(DataError, match="needs the `datasets` package.*hotpot_dev_distractor_v1.json"):
        load_hotpotqa(None, limit=5)


# --------------------------------------------------------------------------- encodings (issue 14, item 7)

BOM = b"\xef\xbb\xbf"


def _docs(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.txt").write_bytes(BOM + "Zorblat is the capital of Quennia.\r\n".encode())
    return d


def test_bom_is_dropped_from_documents_csv_and_jsonl(tmp_path):
    docs = _docs(tmp_path)
    qc = tmp_path / "q.csv"
    qc.write_bytes(BOM + b"question,answers,doc\r\nCapital of Quennia?,Zorblat,a.txt\r\n")
    ds = load_folder(docs, qc)
    assert ds.documents["a.txt"].text == "Zorblat is the capital of Quennia."  # no U+FEFF, no CR
    expected = [("Capital of Quennia?", ("Zorblat",), ("a.txt",))]
    assert [(it.question, it.answers, it.doc_ids) for it in ds.items] == expected
    qj = tmp_path / "q.jsonl"
    qj.write_bytes(BOM + json.dumps({"question": "Capital?", "answers": ["Zorblat"], "doc": "a.txt"}).encode() + b"\n")
    assert load_folder(docs, qj).items[0].answers == ("Zorblat",)


def test_a_windows_1252_document_is_refused_in_one_line_naming_it(tmp_path):
    docs = _docs(tmp_path)
    (docs / "cafe.txt").write_bytes("Le caf\u00e9 ouvre \u00e0 8 h.".encode("cp1252"))
    with pytest.raises(DataError) as err:
        load_folder(docs)
    expected = f"{docs / 'cafe.txt'}: not UTF-8 text (byte 0xe9 at offset 6, line 1); save the file as UTF-8"
    assert str(err.value) == expected


def test_a_windows_1252_questions_file_is_refused_naming_it(tmp_path):
    docs = _docs(tmp_path)
    qc = tmp_path / "q.csv"
    qc.write_bytes("question,answers\nWho?,Andr\u00e9\n".encode("cp1252"))
    with pytest.raises(DataError, match=r"q\.csv: not UTF-8 text \(byte 0xe9 at offset 26, line 2\)"):
        load_folder(docs, qc)


# --------------------------------------------------------------------------- field types (issue 14, item 8)


def _load_rows(tmp_path, *rows, suffix=".jsonl", raw=None):
    docs = _docs(tmp_path)
    q = tmp_path / f"q{suffix}"
    q.write_text(raw if raw is not None else "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return load_folder(docs, q), q


@pytest.mark.parametrize("answers,expected", [
    (1889, ("1889",)),
    ([1889], ("1889",)),
    ([1889, "1890"], ("1889", "1890")),
    ("Zorblat", ("Zorblat",)),
    (2.5, ("2.5",)),
    ([-3, 0], ("-3", "0")),
])
def test_numeric_answers_become_strings(tmp_path, answers, expected):
    ds, _ = _load_rows(tmp_path, {"question": "Q?", "answers": answers})
    assert ds.items[0].answers == expected


@pytest.mark.parametrize("cell,expected", [
    ('"[1889, 1890]"', ("1889", "1890")),
    ("1889", ("1889",)),
    ("1889|1890", ("1889", "1890")),
    ('"[""1889"", 1890]"', ("1889", "1890")),
])
def test_csv_answers(tmp_path, cell, expected):
    ds, _ = _load_rows(tmp_path, suffix=".csv", raw=f"question,answers\nWhen?,{cell}\n")
    assert ds.items[0].answers == expected


@pytest.mark.parametrize("row,message", [
    ({"answers": ["a"]}, "row 2: missing field 'question'"),
    ({"question": "Q?"}, "row 2: missing field 'answers'"),
    ({"question": 42, "answers": ["a"]}, "row 2: 'question' must be a string, got number"),
    ({"question": ["Q?"], "answers": ["a"]}, "row 2: 'question' must be a string, got list"),
    ({"question": "  ", "answers": ["a"]}, "row 2: 'question' is empty"),
    ({"question": "Q?", "answers": ""}, "row 2: an answer is empty"),
    ({"question": "Q?", "answers": ["a", ""]}, "row 2: an answer is empty"),
    ({"question": "Q?", "answers": []}, "row 2: 'answers' is an empty list"),
    ({"question": "Q?", "answers": [True]}, "row 2: an answer must be a string or a number, got boolean"),
    ({"question": "Q?", "answers": [["a"]]}, "row 2: an answer must be a string or a number, got list"),
    ({"question": "Q?", "answers": {"text": "a"}}, "row 2: an answer must be a string or a number, got object"),
    ({"question": "Q?", "answers": [1e20]}, r"row 2: the answer 1e\+20 has no single spelling as text"),
    ({"question": "Q?", "answers": ["a"], "doc": 3}, "row 2: 'doc' must be a string, got number"),
    ({"question": "Q?", "answers": ["a"], "doc_ids": [1]}, "row 2: 'doc_ids' must be a list of document paths"),
    ({"question": "Q?", "answers": ["a"], "rewritten": 5}, "row 2: 'rewritten' must be a string, got number"),
    ({"question": "Q?", "answers": ["a"], "id": 1.5}, "row 2: 'id' must be a string or an integer, got number"),
    ({"question": "Q?", "answers": ["a"], "id": "first"}, "row 2: id 'first' is also the id of row 1"),
    ({"question": "Q?", "answers": ["a"], "doc": "b.txt"}, r"row 2: unknown document\(s\) \['b.txt'\]"),
])
def test_bad_rows_are_refused_naming_file_and_row(tmp_path, row, message):
    good = {"question": "Capital?", "answers": ["Zorblat"], "id": "first"}
    with pytest.raises(DataError, match=r"q\.jsonl " + message) as err:
        _load_rows(tmp_path, good, row)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("suffix,raw,message", [
    (".jsonl", "", "is empty"),
    (".jsonl", "\n  \n", "is empty"),
    (".csv", "", "is empty"),
    (".csv", "question,answers\n", "has no rows"),
    (".jsonl", '["Q?", ["a"]]\n', r"q\.jsonl:1: expected a JSON object"),
    (".csv", "question,answers\nWhen?,[1889\n", r"q\.csv row 1: 'answers' starts with '\[' but is not a JSON list"),
    (".csv", "question,answers\nWhen?,\n", r"q\.csv row 1: 'answers' is empty"),
    (".csv", "question,answers\nWhen, where?,1889\n", r"q\.csv row 1: more fields than the header"),
    (".csv", "question,answers\n,1889\n", r"q\.csv row 1: 'question' is empty"),
    (".csv", "question,answers\nWhen?\n", r"q\.csv row 1: missing field 'answers'"),
])
def test_bad_files_are_refused(tmp_path, suffix, raw, message):
    with pytest.raises(DataError, match=message):
        _load_rows(tmp_path, suffix=suffix, raw=raw)


def test_long_documents_become_passages_with_file_and_offset(tmp_path):
    """Issue 14 item 9: with passage_chars, a long document is cut at sentence ends into passages whose ids
    give the file and the character offset at which each passage's text stands in the file."""
    from pd.data import load_folder
    from pd.data.passages import split_passages

    sentences = [f"Sentence number {i} tells about the harbour." for i in range(40)]
    raw = "\ufeff\n  " + " ".join(sentences) + "\n"
    (tmp_path / "long.txt").write_text(raw, encoding="utf-8")
    (tmp_path / "short.txt").write_text("A short note.\n", encoding="utf-8")
    ds = load_folder(tmp_path, passage_chars=300)
    text = (tmp_path / "long.txt").read_text(encoding="utf-8-sig")  # the file's text, BOM dropped
    long_ids = [d for d in ds.documents if d.startswith("long.txt#")]
    assert len(long_ids) >= len(text.strip()) / 300  # none longer than 300 characters
    for pid in long_ids:
        offset = int(pid.split("#")[1])
        doc = ds.documents[pid]
        assert len(doc.text) <= 300 and doc.text.endswith(".")  # whole sentences
        assert text[offset: offset + len(doc.text)] == doc.text
        assert ds.meta["passages"][pid] == {"source": "long.txt", "offset": offset}
    # Together the passages are the document: every sentence once, in order.
    joined = " ".join(ds.documents[p].text for p in long_ids)
    assert joined == " ".join(sentences)
    assert ds.documents["short.txt"].text == "A short note." and "short.txt" not in ds.meta["passages"]
    assert load_folder(tmp_path).documents.keys() == {"long.txt", "short.txt"}  # no limit: whole documents
    assert split_passages("abcdefghij", 4) == [(0, "abcd"), (4, "efgh"), (8, "ij")]  # no boundary: cut mid-word


# --------------------------------------------------------------------------- received folders confined (issue 22)


def test_a_linked_document_is_refused_naming_it(tmp_path):
    docs = _docs(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0 the password line")
    (docs / "notes.txt").symlink_to(secret)
    with pytest.raises(DataError, match=f"^{docs / 'notes.txt'}: a symbolic link") as err:
        load_folder(docs)
    assert "\n" not in str(err.value)


def test_a_link_to_a_folder_outside_is_refused(tmp_path):
    docs = _docs(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private.md").write_text("Not a document of this folder.")
    (docs / "more").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError, match=f"^{docs / 'more'}: a symbolic link"):
        load_folder(docs)


def test_a_link_that_is_not_a_document_is_ignored_and_ids_are_unchanged(tmp_path):
    docs = _docs(tmp_path)
    (docs / "sub").mkdir()
    (docs / "sub" / "b.md").write_text("Second document.")
    (docs / "data.bin").symlink_to(tmp_path / "elsewhere.bin")
    ds = load_folder(docs)
    assert list(ds.documents) == ["a.txt", "sub/b.md"]


def test_a_special_file_named_like_a_document_is_refused(tmp_path):
    docs = _docs(tmp_path)
    os.mkfifo(docs / "pipe.txt")
    with pytest.raises(DataError, match=f"^{docs / 'pipe.txt'}: not a regular file"):
        load_folder(docs)


@pytest.mark.parametrize("root", ["/proc", "/"])
def test_a_system_folder_as_dataset_is_one_data_error(root):
    with pytest.raises(DataError) as err:
        load_folder(root)
    assert "\n" not in str(err.value)


def test_too_many_files_are_refused_with_the_limit(tmp_path, monkeypatch):
    import pd.data.folder

    docs = _docs(tmp_path)
    for i in range(5):
        (docs / f"d{i}.txt").write_text(f"Document {i}.")
    monkeypatch.setattr(pd.data.folder, "MAX_ENTRIES", 3)
    with pytest.raises(DataError, match="more than 3 files and folders"):
        load_folder(docs)


def test_a_csv_field_over_the_csv_modules_limit_names_file_and_row(tmp_path):
    big = "x" * 140_000
    raw = "question,answers,doc\nWhat is the capital of Quennia?,Zorblat,a.txt\n" + f'"{big}",Zorblat,a.txt\n'
    with pytest.raises(DataError, match=r"q\.csv row 2: cannot read this CSV row \(field larger than field limit"):
        _load_rows(tmp_path, suffix=".csv", raw=raw)
