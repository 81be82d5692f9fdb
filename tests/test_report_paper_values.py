"""The extracted paper values agree with the paper text and with each other."""

import re
from pathlib import Path

import pytest

from pd.report.paper_values import load_paper_values, lookup

# The paper's text is not part of the repository: it lies in ../shared beside the checkout.
REPO = Path(__file__).resolve().parents[1]
PAPER = REPO.parent / "shared" / "paper" / "prompt-distillation-paper.txt"


@pytest.fixture(scope="module")
def tables():
    return load_paper_values()


def _row(tables, tid, label, **axes):
    for r in tables[tid].rows:
        if r.label == label and all((r.axes or {}).get(k) == v for k, v in axes.items()):
            return r.values
    raise KeyError((tid, label, axes))


@pytest.mark.skipif(not PAPER.is_file(), reason=f"the paper's text is not at {PAPER} (../shared/paper/ beside the "
                                                 "repository); this check needs it")
def test_every_value_occurs_in_the_paper_text(tables):
    text = PAPER.read_text(encoding="utf-8")
    numbers = set(re.findall(r"(?<![\d.])[+-]?\d+\.\d+(?![\d.])", text))
    for t in tables.values():
        decimals = 2 if t.id == "16" else 1
        for r in t.rows:
            for col, v in r.values.items():
                forms = {f"{v:.{decimals}f}", f"{v:+.{decimals}f}"}
                assert forms & numbers, f"table {t.id} {r.label} {col}: {v} is not in the paper text"


def test_text_averages_match_table_values(tables):
    # Appendix N: "average LLM-graded correctness for PD was 88.4%, ... substring match was 69.1%"
    judge = _row(tables, "2", "Prompt Distillation", model="llama3-8b-instruct")
    substring = _row(tables, "N.1", "Prompt Distillation", model="llama3-8b-instruct")
    assert round(sum(judge.values()) / 4, 1) == 88.4
    assert round(sum(substring.values()) / 4, 1) == 69.1


@pytest.mark.parametrize("model,label,diff_label", [
    ("llama3-8b-instruct", "Prompt Distillation", "Prompt Distillation"),
    ("llama3-8b-instruct", "Prompt Distillation + RAG", "Prompt Distillation + RAG"),
    ("qwen2.5-14b-instruct", "Prompt Distillation", "Prompt Distillation"),
    ("qwen2.5-14b-instruct", "Prompt Distillation + RAG", "Prompt Distillation + RAG"),
    ("qwen2.5-3b-instruct", "Prompt Distillation", "Prompt Distillation"),
    ("qwen2.5-3b-instruct", "Prompt Distillation + RAG", "Prompt Distillation + RAG"),
])
def test_second_judge_tables_minus_main_table_give_the_published_differences(tables, model, label, diff_label):
    section = {"llama3-8b-instruct": "M.1", "qwen2.5-14b-instruct": "M.2", "qwen2.5-3b-instruct": "M.3"}[model]
    llama = _row(tables, "2", label, model=model)
    qwen = _row(tables, section, label, model=model)
    diff = _row(tables, section + "-diff", diff_label, model=model)
    checked = 0
    for col in set(llama) & set(qwen):
        # both sides are rounded to 0.1, so their difference may be off by 0.1
        assert qwen[col] - llama[col] == pytest.approx(diff[col], abs=0.1 + 1e-9), col
        checked += 1
    assert checked >= 3


def test_repeated_rows_agree_across_tables(tables):
    pd_llama = _row(tables, "2", "Prompt Distillation", model="llama3-8b-instruct")
    assert _row(tables, "4", "PD T=2 / 1.5") == pd_llama
    assert _row(tables, "14", "Forward T=2 / 1.5") == pd_llama
    t10, t11 = tables["10"], tables["11"]
    for a, b in (("PD", "Bonito"), ("PD + emb", "Bonito + emb")):
        x, y = _row(tables, "10", a), _row(tables, "11", b)
        for col in set(x) & set(y):
            assert x[col] == y[col]
    assert list(t10.columns) == ["5", "10", "20", "30", "50", "100", "200"] and len(t11.columns) == 6
    # the inferred NYT value of table 5 is M.4's value plus the published difference
    label = "Llama-3-8B-Instruct + RAG"
    assert _row(tables, "5", label)["nyt"] == pytest.approx(
        _row(tables, "M.4", label)["nyt"] - _row(tables, "M.4-diff", label)["nyt"])


def test_lookup_by_cell_axes():
    axes = {"model": "llama3-8b-instruct", "method": "pd", "retrieval": "none", "dataset": "squadshifts-nyt", "seed": 0}
    v = lookup("2", axes, "judge:llama3-8b-instruct")
    assert v.value == 93.6 and v.column == "nyt" and v.inferred is None
    assert lookup("2", axes, "substring") is None  # another grader is another cell
    assert lookup("N.1", axes, "substring").value == 79.6
    assert lookup("2", dict(axes, model="smollm2-135m-instruct"), "judge:llama3-8b-instruct") is None
    assert lookup("2", dict(axes, dataset="reddit", method="sft"), "judge:llama3-8b-instruct") is None  # lost value
    # expert and teacher default to the model (self-distillation)
    assert lookup("3", dict(axes, dataset="amazon"), "judge:llama3-8b-instruct").value == 86.1
    assert lookup("3", dict(axes, dataset="amazon", expert="llama3-70b-instruct"), "judge:llama3-8b-instruct") is None
    # numeric column axes compare as numbers
    rank = lookup("13", dict(axes, rank=64.0), "judge:llama3-8b-instruct")
    assert rank.value == 92.9
    # "self" and unset mean the paper's standard setting
    judge = "judge:llama3-8b-instruct"
    assert lookup("3", dict(axes, dataset="amazon", expert="self", teacher=None), judge).value == 86.1
    assert lookup("4", dict(axes, kd_temperature=None, answer_temperature=None), judge).value == 93.6
    assert lookup("4", dict(axes, kd_temperature=1.0), "judge:llama3-8b-instruct") is None
    assert lookup("12", dict(axes, method="pd", snapshot=None), "judge:llama3-8b-instruct") is None
    assert lookup("12", dict(axes, method="pd", snapshot=1800), "judge:llama3-8b-instruct").value == 76.8
    assert lookup("10", dict(axes, n_questions=5, qgen="bonito-v1"), "judge:llama3-8b-instruct").value == 83.0
    assert lookup("11", dict(axes, n_questions=5, qgen="self"), "judge:llama3-8b-instruct").value == 84.6
    inferred = lookup("5", dict(axes, method="base", retrieval="openai"), "judge:llama3-8b-instruct")
    assert inferred.value == 96.3 and "M.4" in inferred.inferred
