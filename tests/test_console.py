"""The console a person reads: one line of signal per job, bars named after their job, no repeated warnings."""

from __future__ import annotations

import io
import logging
import re
from collections import Counter

import pytest
from snakemake_interface_logger_plugins.common import LogEvent

from pd.pipeline.console import CompactFilter, compact_console
from pd.pipeline.paths import job_label
from pd.pipeline.run import ConsoleFormatter
from pd.progress import JOB_LABEL_ENV, PROGRESS_ENV, bar, bars_shown


def _record(msg: str, level: int = logging.INFO, event: LogEvent | None = None) -> logging.LogRecord:
    rec = logging.LogRecord("snakemake.logging", level, __file__, 1, msg, None, None)
    if event is not None:
        rec.event = event
    return rec


def test_the_filter_drops_job_blocks_and_chatter_and_keeps_progress_and_errors():
    f = CompactFilter()
    assert not f.filter(_record("Select jobs to execute..."))
    assert not f.filter(_record("Execute 12 jobs..."))
    assert not f.filter(_record("", event=LogEvent.JOB_INFO))
    assert not f.filter(_record("Finished jobid: 7 (Rule: grade)", event=LogEvent.JOB_FINISHED))
    assert f.filter(_record("", event=LogEvent.PROGRESS))
    assert f.filter(_record("", level=logging.ERROR, event=LogEvent.JOB_ERROR))
    assert f.filter(_record("Execute 12 jobs...", level=logging.WARNING))  # only INFO chatter goes
    assert f.filter(_record("Building DAG of jobs..."))


def test_compact_console_touches_console_handlers_only(tmp_path):
    logger = logging.getLogger("test-console-compact")
    stream, file = logging.StreamHandler(io.StringIO()), logging.FileHandler(tmp_path / "log")
    logger.handlers[:] = [stream, file]
    try:
        assert compact_console(logger, lambda: False) == 1 and compact_console(logger) == 0  # once
        assert any(isinstance(f, CompactFilter) for f in stream.filters) and not file.filters
        # asked per record: not active (a dry run, a cluster run) lets everything through
        assert stream.filters[0].filter(_record("Select jobs to execute..."))
    finally:
        file.close()
        logger.handlers[:] = []


@pytest.mark.parametrize("path, label", [
    ("results/demo-nyt/eval/pd/smollm2-135m-instruct/s1/bm25_1a2b3c4d.jsonl",
     "evaluate demo-nyt pd smollm2-135m-instruct s1 bm25"),
    ("results/demo-nyt/grades/base/smollm2-135m-instruct/s0/none_6e9dacce.substring-word.jsonl",
     "grade demo-nyt base smollm2-135m-instruct s0 none substring-word"),
    ("results/demo-nyt/questions/smollm2-135m-instruct_sentence_n3_s0_422cdb1c.jsonl",
     "questions demo-nyt smollm2-135m-instruct_sentence_n3_s0"),
    ("reports/index.html", "report index.html"),
])
def test_job_labels_name_what_the_path_names_without_the_hash(path, label):
    assert job_label(path, "report" if path.startswith("reports") else None, "demo-nyt") == label


def test_console_lines_are_short_and_warnings_say_their_level():
    fmt = ConsoleFormatter()
    info = logging.LogRecord("pd", logging.INFO, __file__, 1, "grade x: done in 0.1 s", None, None)
    warn = logging.LogRecord("transformers.x", logging.WARNING, __file__, 1, "careful", None, None)
    assert re.fullmatch(r"\d\d:\d\d:\d\d grade x: done in 0\.1 s", fmt.format(info))
    assert re.fullmatch(r"\d\d:\d\d:\d\d WARNING transformers\.x: careful", fmt.format(warn))


def test_bars_carry_the_job_label_and_are_drawn_only_on_a_terminal(monkeypatch):
    monkeypatch.setenv(JOB_LABEL_ENV, "evaluate demo-nyt pd s1 bm25")
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert not bars_shown(io.StringIO())  # a log file: no carriage-return soup
    monkeypatch.setenv(PROGRESS_ENV, "1")
    b = bar(3, "generate (tiny)", file=io.StringIO())
    assert b.desc == "evaluate demo-nyt pd s1 bm25: generate (tiny)" and not b.disable
    b.close()
    monkeypatch.setenv(PROGRESS_ENV, "0")
    assert bar(3, "x").disable


def test_a_real_run_prints_one_done_line_per_job_and_no_noise(tiny_workflow_run):
    """The tiny grid through the real Snakefile and profiles/local: every job says `<label>: done in`
    exactly once, Snakemake's progress stays, and nothing else repeats."""
    lines = tiny_workflow_run.log.splitlines()
    done = [ln for ln in lines if re.search(r": done in \d+\.\d s$", ln)]
    labels = Counter(ln.split(" ", 1)[1].rsplit(": done in", 1)[0] for ln in done)
    steps = [ln for ln in lines if re.fullmatch(r"\d+ of \d+ steps \(\d+%\) done", ln)]
    total = int(steps[-1].split()[2])
    assert len(steps) == total and steps[-1].startswith(f"{total} of {total}")
    assert len(done) == total - 1  # every job but `all`, which runs nothing
    assert all(n == 1 for n in labels.values()), labels  # labels tell the jobs apart
    assert {lab.split()[0] for lab in labels} >= {"evaluate", "grade", "retrieval", "manifest", "report"}
    for noise in ("Shell command", "Select jobs to execute", "Finished jobid", "Loading weights", "localrule "):
        assert not any(noise in ln for ln in lines), noise
    warnings = Counter(ln for ln in lines if re.search(r"warn", ln, re.IGNORECASE))
    assert all(n == 1 for n in warnings.values()), warnings
    # what is left: a short header (profile, DAG, job stats), one done line and one progress line per job
    assert len(lines) <= 25 + 2 * total, "\n".join(lines)
