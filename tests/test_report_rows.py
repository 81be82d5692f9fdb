"""The per-sample rows exported beside a report: joined grade + evaluation rows, adapters' logs."""

import gzip
import json

from pd.io import write_json, write_jsonl
from pd.report.aggregate import CellRecord
from pd.report.rows_export import export_rows


def _cell(tmp_path, cell_id, seed, adapter=None):
    grades, evals = tmp_path / f"{cell_id}.grades.jsonl", tmp_path / f"{cell_id}.eval.jsonl"
    write_jsonl(grades, [{"item_id": "q1", "grader": "substring", "correct": True, "valid": True, "reason": None,
                          "answer": "Queens", "gold": ["Queens"]},
                         {"item_id": "q2", "grader": "substring", "correct": False, "valid": True, "reason": None,
                          "answer": "no", "gold": ["1999"]}])
    write_jsonl(evals, [{"item_id": "q2", "gold_logprob": -4.0, "gold_logprob_per_token": -2.0, "gold_alias": "1999",
                         "gold_tokens": 2, "finish_reason": "stop", "n_tokens": 1},
                        {"item_id": "q1", "gold_logprob": -0.5, "gold_logprob_per_token": -0.5, "gold_alias": "Queens",
                         "gold_tokens": 1, "finish_reason": "stop", "n_tokens": 1}])
    d = {"experiment": "x", "cell_id": cell_id, "axes": {"method": "pd", "seed": seed}, "grader": "substring",
         "grades": str(grades), "evaluate": str(evals)}
    if adapter:
        d["adapter"] = str(adapter)
    return CellRecord.from_dict(d)


def test_rows_join_grades_with_their_evaluation_rows_and_adapters_logs(tmp_path):
    adapter = tmp_path / "adapter_a"
    adapter.mkdir()
    write_json(adapter / "heldout.json", {"before": 0.5, "after": 0.3, "n_heldout": 4})
    write_jsonl(adapter / "train_log.jsonl", [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}])
    records = [_cell(tmp_path, "x/pd_s1", 1), _cell(tmp_path, "x/pd_s0", 0, adapter),
               _cell(tmp_path, "x/pd_s0_bm25", 0, adapter)]
    paths = export_rows(records, tmp_path / "report")
    rows = [json.loads(line) for line in gzip.open(paths["rows"], "rt")]
    assert [(r["cell_id"], r["item_id"]) for r in rows] == [
        ("x/pd_s0", "q1"), ("x/pd_s0", "q2"), ("x/pd_s0_bm25", "q1"), ("x/pd_s0_bm25", "q2"),
        ("x/pd_s1", "q1"), ("x/pd_s1", "q2")]
    assert rows[1]["correct"] is False and rows[1]["gold_logprob_per_token"] == -2.0 and rows[1]["gold"] == ["1999"]
    assert rows[0]["axes"] == {"method": "pd", "seed": 0} and rows[0]["gold_alias"] == "Queens"
    (train,) = [json.loads(line) for line in gzip.open(paths["training"], "rt")]
    assert train["cells"] == ["x/pd_s0", "x/pd_s0_bm25"] and train["heldout"]["after"] == 0.3
    assert [s["loss"] for s in train["train_log"]] == [2.0, 1.5]
    first = paths["rows"].read_bytes()
    assert export_rows(list(reversed(records)), tmp_path / "report")["rows"].read_bytes() == first  # deterministic
