"""How an experiment's results were produced: the jobs' wall-clock, the machine, the command.

A table without its cost and machine cannot be compared with another one. Every job of a
cell (questions, answers, teacher, adapter, retrieval, evaluation, grade) has a Snakemake
benchmark file at ``<results>/benchmarks/<dataset>/<path below the dataset>.tsv``; its
seconds and modification time (written when the job ended) give the job's start and end.
Shared jobs are counted once. The span from the first start to the last end is the
experiment's wall-clock; the sum of job seconds is its job time (larger when jobs ran in
parallel).
"""

from __future__ import annotations

import os
import platform
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from pd.report.aggregate import CellRecord
from pd.report.html import read_benchmarks


@dataclass
class RunInfo:
    jobs: int = 0
    wall_s: float = 0.0  # first job start to last job end
    job_s: float = 0.0  # summed job durations
    by_kind: dict[str, float] = field(default_factory=dict)  # job seconds per artifact kind
    machine: str = ""
    command: str = ""

    def lines(self) -> list[tuple[str, str, bool]]:
        """(label, text, is_code) for the tables' "Run" section ([] when no job was benchmarked)."""
        if not self.jobs:
            return []
        kinds = ", ".join(f"{k} {_duration(v)}" for k, v in sorted(self.by_kind.items(), key=lambda kv: -kv[1]))
        return [("Command", self.command, True),
                ("Wall-clock", f"{_duration(self.wall_s)} from the first job's start to the last job's end; "
                               f"{self.jobs} jobs, {_duration(self.job_s)} of job time ({kinds})", False),
                ("Machine", self.machine, False)]


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600} h {s % 3600 // 60} min" if s >= 3600 else f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def machine_description() -> str:
    """CPU model, logical cores, memory and GPUs of this machine (where the report is rendered)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} logical cores"]
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        parts.append(f"{pages * size / 2**30:.0f} GiB memory")
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            parts.append("GPUs: " + ", ".join(names))
        else:
            from pd.precision import describe_cpu_choice

            parts.append("no GPU")
            parts.append(describe_cpu_choice())  # the rule's choice, the same under any load
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return "; ".join(parts) + f"; {platform.system()} {platform.release()}"


def reproduce_command(experiment: str, profile: str = "profiles/local") -> str:
    return f"snakemake --profile {profile} --config {shlex.quote(f'run=[{experiment}]')}"


def run_info(records: Iterable[CellRecord], experiment: str, machine: str | None = None) -> RunInfo:
    """The wall-clock and job time of all jobs behind ``records`` (their ``job_benchmarks``, each once)."""
    files: dict[str, str] = {}  # benchmark file -> job kind
    for rec in records:
        files.update(rec.extra.get("job_benchmarks") or {})
    info = RunInfo(machine=machine if machine is not None else machine_description(),
                   command=reproduce_command(experiment))
    starts, ends = [], []
    for b, kind in sorted(files.items()):
        cost = read_benchmarks([b])
        if cost is None:
            continue
        end = Path(b).stat().st_mtime
        starts.append(end - cost.wall_s)
        ends.append(end)
        info.jobs += 1
        info.job_s += cost.wall_s
        info.by_kind[kind] = info.by_kind.get(kind, 0.0) + cost.wall_s
    if info.jobs:
        info.wall_s = max(ends) - min(starts)
    return info
