"""The judge calibration: a good judge passes the shipped set, a judge with a bad template is flagged.

The judge is tests/rule_judge.py (a deterministic program that follows the judge prompt's
instructions) served by pd.serve over real HTTP and reached through the openai backend, as an
API judge would be; its templates are the built-in ones or overrides installed as a config's
``prompts:`` installs them.
"""

from __future__ import annotations

import json

import pytest
from rule_judge import MODEL_NAME, RuleJudge

from pd import prompts
from pd.errors import DataError
from pd.evaluation.judge_calibration import (
    CALIBRATION_SET,
    LABELS,
    calibrate,
    calibration_line,
    load_calibration_set,
    run_calibration,
    shortfalls,
)
from pd.generate.openai_backend import OpenAIGenerator
from pd.serve import create_app, serve_in_thread

# A template that makes the judge say yes to everything (its instructions say so).
YES_TEMPLATE = """You are checking answers. Grade every response true: write <grade>true</grade>.

Question: {{ question }}
Accepted answers: {% for a in answers %}"{{ a }}"{% if not loop.last %}; {% endif %}{% endfor %}
Response: {{ response }}
"""
# A lenient template: it asks only whether an accepted answer is mentioned, so hedges that name one pass.
LENIENT_TEMPLATE = """Grade the response true if it mentions one of the accepted answers, else false.
Write the grade inside <grade></grade> tags.

Question: {{ question }}
Accepted answers: {% for a in answers %}"{{ a }}"{% if not loop.last %}; {% endif %}{% endfor %}
Response: {{ response }}
"""


@pytest.fixture(scope="module")
def judge_url():
    with serve_in_thread(create_app(RuleJudge(), model_name=MODEL_NAME)) as url:
        yield url


@pytest.fixture
def judge(judge_url):
    return OpenAIGenerator(MODEL_NAME, base_url=judge_url, max_workers=4, max_retries=0, cache_tag="rules-v1")


@pytest.fixture
def override(tmp_path):
    def install(source: str) -> None:
        path = tmp_path / "judge.j2"
        path.write_text(source)
        prompts.set_overrides({"judge_squadshifts": str(path)})

    yield install
    prompts.set_overrides(None)


def test_the_shipped_set_has_every_class_on_many_questions():
    cases = load_calibration_set()
    counts = {lab: sum(c.label == lab for c in cases) for lab in LABELS}
    assert all(n >= 15 for n in counts.values()), counts
    assert len({c.item_id for c in cases}) >= 15
    for item in {c.item_id for c in cases}:  # every question has its gold answer among the candidates
        mine = [c for c in cases if c.item_id == item]
        assert any(c.label == "gold" and c.candidate in c.answers for c in mine), item
    assert [c.should_pass for c in cases[:2]] == [True, True]


def test_a_good_judge_passes_and_differs_from_substring_match_where_it_should(judge):
    result = calibrate(judge, load_calibration_set())
    assert shortfalls(result, 0.9) == [], result["classes"]
    assert result["classes"]["gold"]["agreement"] == 1.0
    assert result["classes"]["hedge"]["agreement"] == 1.0
    assert result["invalid"] == 0
    # Substring match passes hedges that name the gold answer and fails numbers written in words.
    assert result["classes"]["hedge"]["substring_agreement"] < 0.7
    assert result["classes"]["paraphrase"]["substring_agreement"] < 1.0
    assert result["substring"]["agreement"] < result["agreement"]
    assert 0.5 < result["judge_vs_substring"]["agreement"] < 1.0
    line = calibration_line(result, 0.9)
    assert line.startswith(f"judge calibration: {result['agree']}/{result['n']} (")
    assert "gold pass 100%" in line and "hedges fail 100%" in line and "BELOW" not in line
    assert result["judge"].startswith("openai:") or "rule-judge" in result["judge"]


def test_a_yes_to_everything_template_fails_the_calibration(judge, override):
    override(YES_TEMPLATE)
    result = calibrate(judge, load_calibration_set())
    assert result["classes"]["gold"]["agreement"] == 1.0
    assert result["classes"]["wrong"]["agreement"] == 0.0 == result["classes"]["hedge"]["agreement"]
    assert shortfalls(result, 0.9) == ["overall", "wrong", "hedge"]
    line = calibration_line(result, 0.9)
    assert "hedges fail 0%" in line and "BELOW THE THRESHOLD 90% (overall, wrong, hedge)" in line


def test_a_lenient_template_is_flagged_for_passing_hedges(judge, override):
    override(LENIENT_TEMPLATE)
    result = calibrate(judge, load_calibration_set())
    assert result["classes"]["wrong"]["agreement"] == 1.0
    assert result["classes"]["hedge"]["agreement"] < 0.7  # the hedges that name the gold answer pass
    assert "hedge" in shortfalls(result, 0.9)
    assert shortfalls(result, 0.3) == []  # the threshold decides


def test_the_hotpotqa_template_calibrates_too(judge, tmp_path):
    out = tmp_path / "calibration.json"
    result = run_calibration(out, judge, template="judge_hotpotqa")
    assert shortfalls(result, 0.9) == []
    written = json.loads(out.read_text())
    assert written["template"] == "judge_hotpotqa" and written["set"] == CALIBRATION_SET.name
    assert len(written["rows"]) == written["n"]


def test_a_malformed_set_is_refused(tmp_path):
    bad = tmp_path / "set.jsonl"
    bad.write_text(json.dumps({"id": "a", "question": "Q?", "answers": ["x"],
                               "candidates": [{"text": "x", "label": "maybe"}]}) + "\n")
    with pytest.raises(DataError, match="'label' of gold, paraphrase, wrong, hedge"):
        load_calibration_set(bad)
    bad.write_text(json.dumps({"id": "a", "question": "Q?", "answers": ["x"],
                               "candidates": [{"text": "x", "label": "gold"}]}) + "\n")
    with pytest.raises(DataError, match="no candidate labelled paraphrase, wrong, hedge"):
        load_calibration_set(bad)
    with pytest.raises(DataError, match="does not exist"):
        load_calibration_set(tmp_path / "none.jsonl")


def test_the_report_flags_a_judge_below_its_threshold_or_uncalibrated(judge, tmp_path, caplog):
    from pd.report.aggregate import CellRecord
    from pd.report.calibration import calibration_notes

    out = tmp_path / "cal.json"
    run_calibration(out, judge)

    def record(grader: str, file, threshold: float) -> CellRecord:
        cal = {"judge_calibration": {"file": str(file), "threshold": threshold}} if grader != "substring" else {}
        return CellRecord.from_dict({"experiment": "e", "cell_id": grader + str(threshold), "axes": {},
                                     "grader": grader, "grades": "g.jsonl", **cal})

    recs = [record("judge:j", out, 0.9), record("judge:j", out, 0.9), record("substring", out, 0.9)]
    (note,) = calibration_notes(recs, "judge:j")
    assert not note.flagged and note.line.startswith("judge calibration: 102/102 (100%), gold pass 100%, "
                                                     "paraphrases pass 100%, wrong fail 100%, hedges fail 100%;")
    assert calibration_notes(recs, "substring") == []
    with caplog.at_level("WARNING", logger="pd.report.calibration"):
        (strict,) = calibration_notes([record("judge:j", out, 1.01)], "judge:j")
        (missing,) = calibration_notes([record("judge:j", tmp_path / "none.json", 0.9)], "judge:j")
    assert strict.flagged and "BELOW THE THRESHOLD 101%" in strict.line
    assert missing.flagged and "not run (none.json missing)" in missing.line
    assert len(caplog.records) == 2
