"""A teacher other than the student runs in its own job; the student's job reads its top-k targets,
for training and for the held-out KL, and never loads the teacher network."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from pd.config import load_config
from pd.io import read_json
from pd.models import get_spec, load_model, load_tokenizer
from pd.pipeline.plan import build_plan
from pd.pipeline.run import run_job
from pd.train.heldout import heldout_kl
from pd.train.settings import SEPARATE_TEACHER_TOPK

sys.path.insert(0, str(Path(__file__).parent))
from test_train_processes import TINY_TRAIN, write_answers  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_student_job_reads_the_larger_teachers_cache(tmp_path, one_thread):
    raw = yaml.safe_load(TINY_TRAIN.read_text())
    exp = raw["experiments"]["tiny_train"]
    exp["grid"].update(method=["pd"], teacher=["tiny-llama-large"])
    exp["capability"] = False
    raw.update(results_dir=str(tmp_path / "results"), reports_dir=str(tmp_path / "reports"))
    plan = build_plan(load_config(yaml.safe_load((ROOT / "config.yaml").read_text()), raw))
    (adapter,) = plan.of_kind("adapter")
    (teacher,) = plan.of_kind("teacher")
    assert teacher.model == "tiny-llama-large" and adapter.model == "tiny-llama"
    assert adapter.spec.training["teacher_topk"] == SEPARATE_TEACHER_TOPK and adapter.spec.teacher == teacher.path

    write_answers(adapter.spec)
    run_job("teacher", teacher.spec.as_dict(), [teacher.path], [str(tmp_path / "teacher.log")], threads=1)
    assert not Path(f"{teacher.path}.work").exists()  # its chunks are gone once the cache is in place
    run_job("adapter", adapter.spec.as_dict(), [adapter.path], [str(tmp_path / "adapter.log")], threads=1)
    record = read_json(Path(adapter.path) / "heldout.json")
    assert record["teacher"] == "tiny-llama-large" and record["teacher_targets"] == f"top-{SEPARATE_TEACHER_TOPK} cache"

    # Against the live teacher network (the 70B stand-in, loaded here and not in the job): the cached
    # top-128 KL groups the other tokens into one bucket, and grouping never raises a KL (log-sum
    # inequality), so it is a positive lower bound of the full one.
    from pd.pipeline.kinds.adapter import training_rows
    from pd.train.rows import heldout_examples

    _, held = training_rows(adapter.spec)
    student, big = get_spec("tiny-llama"), get_spec("tiny-llama-large")
    pairs = heldout_examples(held, adapter.spec.load_dataset())
    live = heldout_kl(load_model(student, device="cpu"), load_tokenizer(student), student, pairs, 2.0,
                      teacher_model=load_model(big, device="cpu"))
    assert 0 < record["before"] <= live
    assert 0 < record["after"] < record["before"]
