"""SQuADShifts, HotpotQA and folder loaders on the real files and on files written here."""

import json

import pytest

from pd.data import (SQUADSHIFTS_DIR, load_dataset, load_folder, load_hotpotqa, load_squadshifts,
                     parse_squadshifts_line, unquote_csv_line)
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
    assert it.rewritten == 'Who exclaimed "Holy cow, Mattingly is unbelievable" while announcing a baseball game on television?'
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
