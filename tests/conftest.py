"""Test setup: offline hub, shared fixtures (models loaded once per session, one tiny workflow run,
the SLURM cluster check)."""

import dataclasses
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from pd.models import get_spec, load_model, load_tokenizer  # noqa: E402


class Loaded:
    """A spec with its tokenizer and (lazily) a fresh model copy."""

    def __init__(self, name: str, dtype: str | None = None):
        spec = get_spec(name)
        self.spec = dataclasses.replace(spec, dtype=dtype) if dtype else spec
        self.tokenizer = load_tokenizer(self.spec)

    def model(self):
        return load_model(self.spec, device="cpu")


@pytest.fixture(scope="session")
def tiny_llama() -> Loaded:
    return Loaded("tiny-llama")


@pytest.fixture(scope="session")
def tiny_qwen2() -> Loaded:
    return Loaded("tiny-qwen2")


@pytest.fixture(scope="session")
def smollm2() -> Loaded:
    # float32 on every machine (`auto` would pick bfloat16 where it is fast): tests compare with
    # float64 references and expect the same numbers on every CPU.
    return Loaded("smollm2-135m-instruct", dtype="float32")


@pytest.fixture(scope="module")
def one_thread():
    """Small models are overhead-bound: one intra-op thread avoids OpenMP spin-waiting on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_generator(tiny_llama):
    """A transformers generator on tiny-llama (random weights): real generation, nonsense text."""
    from pd.generate.transformers_backend import TransformersGenerator

    return TransformersGenerator(tiny_llama.spec, progress=False, batch_size=8)


# --------------------------------------------------------------------------- one tiny workflow run

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "configs" / "tiny.yaml"


@dataclass(frozen=True)
class WorkflowRun:
    """A finished Snakemake run: its folder (the working directory), config file and output folders."""

    folder: Path
    config: Path
    results: Path
    reports: Path
    log: str  # Snakemake's stderr


def snakemake_command(folder: Path, config: Path, *extra: str) -> list[str]:
    """The real Snakefile with profiles/local on ``config``, writing results and reports under ``folder``."""
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
            "--profile", str(REPO / "profiles" / "local"),
            "--configfile", str(config), "--config", f"results_dir={folder / 'results'}",
            f"reports_dir={folder / 'reports'}", "--cores", "2", *extra]


@pytest.fixture(scope="session")
def tiny_workflow_run(tmp_path_factory) -> WorkflowRun:
    """ONE run of the workflow's tiny grid (tests/configs/tiny.yaml) per session, shared by the tests that
    only read its outputs. A test that reruns, kills or edits a run needs its own folder."""
    if not TINY_CONFIG.is_file():
        pytest.skip(f"the workflow's tiny config {TINY_CONFIG} is not there")
    folder = tmp_path_factory.mktemp("tiny-workflow")
    out = subprocess.run(snakemake_command(folder, TINY_CONFIG), cwd=folder, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return WorkflowRun(folder, TINY_CONFIG, folder / "results", folder / "reports", out.stderr)


@pytest.fixture
def headless_chromium(tmp_path) -> list[str]:
    """The command line of a headless Chromium with a fresh profile (append the page's flags and URL); skips
    when Chromium is not installed."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (CI: apt-get install -y --no-install-recommends chromium)")
    return [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chromium-profile'}"]


# --------------------------------------------------------------------------- SLURM

UP_STATES = {"idle", "mix", "alloc", "comp"}


def cluster_problem() -> str | None:
    """Why no SLURM cluster can take jobs here, or None when one can."""
    if shutil.which("sinfo") is None:
        return "sinfo not found: SLURM is not installed"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s (slurmctld down?)"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip() or out.stdout.strip()}"
    states = set(out.stdout.split())
    if not states & UP_STATES:
        return f"no SLURM node is up (sinfo states: {sorted(states) or 'none'})"
    return None


@pytest.fixture
def slurm_cluster():
    """A SLURM cluster that can take jobs: skips without one, fails without one when PD_REQUIRE_SLURM=1 (CI)."""
    problem = cluster_problem()
    if problem is None:
        return
    hint = "start one as root with .ci/slurm-up.sh"
    if os.environ.get("PD_REQUIRE_SLURM") == "1":
        pytest.fail(f"PD_REQUIRE_SLURM=1 but {problem}; {hint}")
    pytest.skip(f"{problem}; {hint} (PD_REQUIRE_SLURM=1 makes this a failure)")
