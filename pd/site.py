"""A cluster's site settings (``profiles/slurm/site.yaml``): what each job's submission needs.

:func:`load_site` reads and checks them; :mod:`pd.pipeline.resources` turns them, with its
estimates, into each job's resources.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from pd.errors import ConfigError
from pd.precision import REQUESTS

DEVICES = ("cpu", "gpu")
# Exported to every job of a site unless its file says otherwise: compute nodes usually have
# no network, so the hub clients read only the caches `pd fetch` filled.
JOB_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
GPU_REQUESTS = ("gpus", "gres")
# Hands the site's `checkpoint_minutes` to the adapter jobs (training.checkpoint_minutes when the config leaves it
# unset): set in the submitting Snakemake's environment with the site's `env`, which every job inherits.
CHECKPOINT_MINUTES_ENV = "PD_CHECKPOINT_MINUTES"


@dataclass(frozen=True)
class SizeTier:
    """Explicit values for jobs of one kind whose model has at most ``max_params_b``."""

    max_params_b: float
    mem_mb: int | None = None
    runtime: int | None = None
    gpus: int | None = None
    cpus_per_task: int | None = None


@dataclass(frozen=True)
class Site:
    """What a cluster needs in each job's submission; see profiles/slurm/site.yaml."""

    device: str = "gpu"
    partition: str | None = None
    gpu_partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpu_constraint: str | None = None
    gpu_model: str | None = None
    gpu_request: str = "gpus"
    gpu_mem_gb: float = 80.0
    gpu_tflops: float = 989.0  # bf16 dense peak of one GPU (H100/H200 989, A100 312): the cost model's compute
    gpu_bandwidth_gbs: float = 3350.0  # memory bandwidth, GB/s (H100 SXM 3350, H200 4800, A100 80GB 2039)
    gpus_per_node: int = 8
    cpus_per_gpu: int = 8
    cpus_per_task: int = 4
    max_cpus_per_task: int | None = None
    max_mem_mb: int | None = None
    max_runtime: int | None = None
    runtime_factor: float = 1.0
    # precision: what `dtype: auto` means on the compute nodes (None: bfloat16 on GPUs, float32 on CPUs)
    precision: str | None = None
    slurm_extra: str | None = None
    # Whether compute nodes reach services over the network (an OpenAI-compatible backend). False (most
    # clusters): `pd validate` refuses jobs that would call one there; API embeddings run in a local rule.
    compute_network: bool = False
    # Jobs that outlive their time limit: adapters checkpoint every `checkpoint_minutes` (0: never) and get
    # SIGTERM `term_before_limit_s` seconds before the limit (sbatch --signal; 0: only SLURM's own at the limit),
    # on which they save a checkpoint and exit; the retry resumes (pd.train.interrupt).
    checkpoint_minutes: float = 30.0
    term_before_limit_s: int = 300
    sizes: Mapping[str, tuple[SizeTier, ...]] = field(default_factory=dict)
    env: Mapping[str, str | None] = field(default_factory=lambda: dict(JOB_ENV))  # None: the submitting shell's

    def gpu(self):
        """One of the site's GPUs for the cost model (:class:`pd.cost.GPU`): ``gpu_mem_gb`` is the size GPUs are
        sold by (GiB: an "80 GB" H100 holds 85.9 GB), the cost model counts 10^9 bytes."""
        from pd.cost.calibration import GPU

        return GPU(memory_gb=self.gpu_mem_gb * 2**30 / 1e9, tflops=self.gpu_tflops,
                   bandwidth_gbs=self.gpu_bandwidth_gbs)

    def job_env(self) -> dict[str, str]:
        """The variables every job gets: the site's ``env`` (those set to None keep the submitting shell's
        value) and :data:`CHECKPOINT_MINUTES_ENV`."""
        return {**{k: v for k, v in self.env.items() if v is not None},
                CHECKPOINT_MINUTES_ENV: str(float(self.checkpoint_minutes))}


_SITE_FIELDS = {f.name: f for f in dataclasses.fields(Site)}
_TIER_FIELDS = {f.name for f in dataclasses.fields(SizeTier)}
_INT_FIELDS = {"gpus_per_node", "cpus_per_gpu", "cpus_per_task", "max_cpus_per_task", "max_mem_mb", "max_runtime"}
_FLOAT_FIELDS = {"gpu_mem_gb", "gpu_tflops", "gpu_bandwidth_gbs", "runtime_factor"}
_BOOL_FIELDS = {"compute_network"}
_ZERO_OR_MORE = {"checkpoint_minutes": float, "term_before_limit_s": int}  # 0: off


def load_site(source: str | Path | Mapping[str, Any] | Site | None, key: str = "slurm_site",
              kinds: Iterable[str] | None = None) -> Site | None:
    """A :class:`Site` from a mapping, a YAML file, or None (no site: local runs).

    A YAML file may hold the settings at the top level or under ``slurm_site:`` (the
    form profiles/slurm/site.yaml uses, so Snakemake can read it as a config file).

    Args:
        source: the settings, a YAML file, a Site (returned as it is) or None.
        key: the mapping key a YAML file may hold the settings under.
        kinds: the job kinds ``sizes`` may name (:func:`pd.pipeline.resources.load_site` passes the
            registry's); None: not checked.

    Returns:
        The site, or None.

    Raises:
        ConfigError: an unknown setting or kind, or a value of the wrong type.
    """
    if source is None or isinstance(source, Site):
        return source
    if isinstance(source, (str, Path)):
        from pd.config_checks import load_yaml_mapping

        path = Path(source)
        data = load_yaml_mapping(path, "site file (a YAML file like profiles/slurm/site.yaml)")
        where = str(path)
        if key in data:
            source, where = data[key] or {}, f"{path}: {key}"
        else:
            source = data
    else:
        where = key
    if not isinstance(source, Mapping):
        raise ConfigError(f"{where}: expected a mapping of site settings, got {type(source).__name__}")
    return _site_from_mapping(dict(source), where, None if kinds is None else tuple(kinds))


def _site_from_mapping(d: dict[str, Any], where: str, kinds: tuple[str, ...] | None) -> Site:
    unknown = set(d) - set(_SITE_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)}; allowed: {sorted(_SITE_FIELDS)}")
    values: dict[str, Any] = {}
    for name, value in d.items():
        if value is None:
            continue
        if name == "sizes":
            values[name] = _parse_sizes(value, where, kinds)
        elif name == "env":
            values[name] = _parse_env(value, where)
        elif name in _INT_FIELDS:
            values[name] = _positive(value, f"{where}.{name}", int)
        elif name in _FLOAT_FIELDS:
            values[name] = _positive(value, f"{where}.{name}", float)
        elif name in _BOOL_FIELDS:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{name}: expected true or false, got {value!r}")
            values[name] = value
        elif name in _ZERO_OR_MORE:
            values[name] = _positive(value, f"{where}.{name}", _ZERO_OR_MORE[name], zero=True)
        else:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ConfigError(f"{where}.{name}: expected a string, got {value!r}")
            values[name] = str(value)
    site = Site(**values)
    if site.device not in DEVICES:
        raise ConfigError(f"{where}.device: {site.device!r} is not one of {list(DEVICES)}")
    if site.gpu_request not in GPU_REQUESTS:
        raise ConfigError(f"{where}.gpu_request: {site.gpu_request!r} is not one of {list(GPU_REQUESTS)}")
    if site.precision is not None and site.precision not in REQUESTS:
        raise ConfigError(f"{where}.precision: {site.precision!r} is not one of {list(REQUESTS)}")
    return site


def _positive(value: Any, where: str, kind: type, zero: bool = False) -> Any:
    ok_types = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types) or value < 0 or (value == 0 and not zero):
        what = (f"{'an integer' if kind is int else 'a number'} >= 0 (0: off)" if zero
                else f"a positive {kind.__name__}")
        raise ConfigError(f"{where}: expected {what}, got {value!r}")
    return kind(value)


def _parse_sizes(value: Any, where: str, kinds: tuple[str, ...] | None) -> dict[str, tuple[SizeTier, ...]]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}.sizes: expected a mapping from rule kind to a list of tiers, got {value!r}")
    out = {}
    for kind, tiers in value.items():
        if kinds is not None and kind not in kinds:
            raise ConfigError(f"{where}.sizes: unknown kind {kind!r}; allowed: {list(kinds)}")
        if not isinstance(tiers, list):
            raise ConfigError(f"{where}.sizes.{kind}: expected a list of tiers like {{max_params_b: 8, runtime: 600}}")
        parsed = []
        for i, tier in enumerate(tiers):
            w = f"{where}.sizes.{kind}[{i}]"
            if not isinstance(tier, Mapping) or "max_params_b" not in tier:
                raise ConfigError(f"{w}: expected a mapping with 'max_params_b' and some of "
                                  f"{sorted(_TIER_FIELDS - {'max_params_b'})}")
            unknown = set(tier) - _TIER_FIELDS
            if unknown:
                raise ConfigError(f"{w}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TIER_FIELDS)}")
            parsed.append(SizeTier(
                max_params_b=_positive(tier["max_params_b"], f"{w}.max_params_b", float),
                **{k: _positive(v, f"{w}.{k}", int) for k, v in tier.items() if k != "max_params_b" and v is not None},
            ))
        out[kind] = tuple(sorted(parsed, key=lambda t: t.max_params_b))
    return out


# Variables that change which code a job runs (loaded libraries, import paths, interpreter hooks): a site
# file may not set them, since every job would run that code.
CODE_ENV = ("LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONUSERBASE",
            "PYTHONEXECUTABLE", "PYTHONINSPECT", "BASH_ENV", "ENV", "PATH")


def _parse_env(value: Any, where: str) -> dict[str, str | None]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}.env: expected a mapping of environment variables, e.g. {{HF_HOME: /shared/hf}}")
    out: dict[str, str | None] = {**JOB_ENV}
    for k, v in value.items():
        if not isinstance(k, str) or not k.replace("_", "").isalnum() or k[0].isdigit():
            raise ConfigError(f"{where}.env: {k!r} is not an environment variable name")
        if k in CODE_ENV or k.startswith(("LD_", "PYTHON")):
            raise ConfigError(f"{where}.env.{k}: a site file may not set a variable that decides which code jobs "
                              "run; set it in your own shell instead")
        if isinstance(v, (dict, list)):
            raise ConfigError(f"{where}.env.{k}: expected a string, a number or null, got {v!r}")
        out[k] = None if v is None else os.path.expanduser(os.path.expandvars(str(v)))
    return out


def apply_job_env(site: Site | None, environ: dict | None = None) -> dict[str, str]:
    """Put the site's job variables into this process's environment (Snakemake's, on the submitting host).

    The SLURM executor plugin submits every job with ``sbatch --export=ALL``: a job starts
    with the environment of the Snakemake process that submitted it, so what is set here
    reaches every job (and the job's own Snakemake, which reads the same site file, sets
    it again).

    Args:
        site: the site (None: local runs, nothing is set).
        environ: the environment to change (default: ``os.environ``).

    Returns:
        The variables set.
    """
    if site is None:
        return {}
    env = site.job_env()
    (os.environ if environ is None else environ).update(env)
    return env


def checkpoint_minutes_from_env(environ: Mapping[str, str] | None = None) -> float | None:
    """The site's ``checkpoint_minutes`` as a job reads it (:data:`CHECKPOINT_MINUTES_ENV`).

    Args:
        environ: the environment (default: ``os.environ``).

    Returns:
        The minutes (0: no timed checkpoints), or None when the variable is unset or empty (local runs).

    Raises:
        ConfigError: a value that is not a number >= 0.
    """
    raw = (os.environ if environ is None else environ).get(CHECKPOINT_MINUTES_ENV, "").strip()
    if not raw:
        return None
    try:
        minutes = float(raw)
    except ValueError:
        minutes = -1.0
    if not minutes >= 0 or minutes == float("inf"):
        raise ConfigError(f"{CHECKPOINT_MINUTES_ENV}: expected minutes >= 0 (0: no timed checkpoints), got {raw!r}; "
                          "it comes from the site file's checkpoint_minutes")
    return minutes
