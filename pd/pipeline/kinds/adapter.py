"""One trained LoRA adapter per (method, student, data, settings, seed), with its held-out KL."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pd.pipeline.kind import JobKind, PathPattern, register
from pd.pipeline.sizing import CACHE_BYTES_PER_ENTRY, REFERENCE, dataset_size, questions_behind
from pd.pipeline.spec import JobSpec


@dataclass(frozen=True)
class AdapterSpec(JobSpec):
    KIND: ClassVar[str] = "adapter"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"answers", "teacher_model", "teacher", "models_extra",
                                                     "reg_data_hash"})
    method: str
    model: str
    dataset: str
    dataset_cfg: dict
    seed: int
    subset: str
    answers: str | None = None  # not for UFT, which trains on the passages
    teacher_model: str | None = None  # distilling methods
    teacher: str | None = None  # the teacher job's folder (top-k cache, per-example statistics)
    training: dict = field(default_factory=dict)  # TrainConfig fields and heldout_fraction
    models_extra: dict | None = None
    reg_data_hash: str | None = None  # the content of a local training data file the method reads (pd_reg)

    @property
    def heldout_fraction(self) -> float:
        """Extra questions generated and held out, relative to the training questions (0: none)."""
        return float(self.training.get("heldout_fraction", 0.0))

    def train_config(self):
        """The :class:`pd.train.settings.TrainConfig` of this adapter (held-out settings aside)."""
        from pd.train.settings import TrainConfig

        settings = {k: v for k, v in self.training.items() if k != "heldout_fraction"}
        return TrainConfig.from_dict(settings, method=self.method, seed=self.seed)


@register
class Adapter(JobKind):
    name = "adapter"
    pattern = PathPattern("{R}/{dataset}/adapters/{method}/{model}/{stem}", directory=True)
    spec = AdapterSpec
    gpu = True
    priority = 30
    base_runtime = 720
    stops_on_sigterm = True  # a checkpoint at the end of the current optimizer step (pd.train.interrupt)

    def plan(self, planner, c) -> str:
        """The adapter of a trained cell, after the answers and teacher statistics its method needs."""
        from pd.pipeline import identity
        from pd.train.methods import get_method
        from pd.train.settings import SEPARATE_TEACHER_TOPK

        m = c.method
        method = get_method(m)
        train = planner.training(c)
        train["rank"] = c.rank
        apath = planner.need("answers", c) if method.answers is not None else None
        teacher_model = tpath = None
        if method.distils:
            train["kd_temperature"] = c.kd_temperature
            teacher_model = c.teacher
            if teacher_model != c.model and train["teacher_topk"] == 0:
                # Another (larger) teacher never runs inside the student's job: a teacher job sized
                # for it caches its top-k targets, and training reads them.
                train["teacher_topk"] = SEPARATE_TEACHER_TOPK
            if train["teacher_topk"] > 0 or c.subset != "all":
                tpath = planner.need("teacher", c, apath, train)
        files = method.data_files(train)  # e.g. pd_reg's local instruction data: part of the identity by content
        reg_hash = identity.file_identity(files[0]) if files else None
        spec = AdapterSpec(method=m, model=c.model, **planner.data(c), seed=c.seed, subset=c.subset,
                           answers=apath, teacher_model=teacher_model, teacher=tpath, training=train,
                           models_extra=planner.models(c.model, teacher_model), reg_data_hash=reg_hash)
        stem = f"r{c.rank}_{planner.hash(spec)}_s{c.seed}"
        return planner.add(spec, {"dataset": c.dataset, "method": m, "model": c.model, "stem": stem},
                           tuple(p for p in (apath, tpath) if p), c.model)

    def run(self, spec: AdapterSpec, out: str) -> None:
        """Train one adapter; write it with ``pd_meta.json`` and the held-out KL before and after.

        With ``training.processes`` above one (``auto``: the job's GPUs) and outside a distributed
        launch, the job launches that many training processes (:func:`pd.train.launch.launch`), each
        running :func:`run_rank`; rank 0 writes the adapter.

        Args:
            spec: the adapter job's specification.
            out: the adapter folder (PEFT files, ``pd_meta.json``, ``heldout.json``, ``train_log.jsonl``).

        Raises:
            DataError: no training rows are left (an empty answers file), or too few for a quintile.
            ConfigError: invalid training settings, or fewer optimizer steps than ``training.min_steps``.
        """
        from pd.train.launch import launch, resolve_processes
        from pd.train.ranks import in_launch

        processes = resolve_processes(spec.train_config().processes)
        if processes > 1 and not in_launch():
            launch(f"{__name__}:run_rank", spec.as_dict(), out, processes)
        else:
            train_adapter(spec, out)

    # -- sizing -----------------------------------------------------------------------------

    def work(self, art, plan) -> float:
        """Epochs x training questions (a quintile ``subset``: a fifth; UFT: test items x 30)."""
        spec, ref = art.spec, REFERENCE
        epochs = float(spec.training.get("epochs", ref["epochs"]))
        questions = questions_behind(art, plan) or dataset_size(spec.dataset_cfg)[1] * ref["per_item"]
        share = 0.2 if spec.subset != "all" else 1.0
        return max(epochs * questions * share, 1.0) / (ref["epochs"] * ref["items"] * ref["per_item"])

    def planned_examples(self, art, plan) -> int:
        """The passage examples the run will train on, as far as the plan knows: the training questions (those
        the questions job writes less the held-out ones, :func:`pd.train.rows.heldout_count`; a quintile
        ``subset``: a fifth), or UFT's passage chunks (:func:`pd.pipeline.sizing.uft_chunks`)."""
        from pd.pipeline.sizing import uft_chunks
        from pd.train.rows import heldout_count

        spec = art.spec
        if spec.answers is None:  # trains on overlapping passage chunks
            cfg = spec.train_config()
            return uft_chunks(spec.dataset_cfg, cfg.uft_chunk_tokens, cfg.uft_overlap)
        questions = questions_behind(art, plan)
        examples = questions - heldout_count(questions, spec.heldout_fraction)
        return max(1, round(examples * (0.2 if spec.subset != "all" else 1.0)))

    def workload(self, art, plan):
        """The run's rows (examples x epochs, :meth:`planned_examples`), its optimizer steps
        (:func:`pd.train.steps.run_steps`), its global batch and row lengths: PD and SFT rows are question +
        answer (PD's teacher adds the passages), UFT's are passage chunks, ``pd_reg`` adds instruction rows of up
        to ``max_reg_tokens`` to every batch."""
        from pd.cost.shapes import Tokens
        from pd.data import get_loader
        from pd.pipeline.sizing import Training, training_tokens
        from pd.train.fit import fixed_layout
        from pd.train.methods import get_method
        from pd.train.steps import run_steps

        spec = art.spec
        cfg = spec.train_config()
        method = get_method(spec.method)
        examples = self.planned_examples(art, plan)
        if spec.answers is None:
            chunk = cfg.uft_chunk_tokens
            longest = mean = Tokens(chunk, 0, chunk)
        else:
            answers = plan.get(spec.answers).spec
            passages_in_prompt = get_loader(spec.dataset_cfg["loader"]).passages_per_item
            longest, mean = training_tokens(answers.sampling.max_new_tokens, cfg.max_answer_tokens,
                                            cfg.max_teacher_tokens, passages_in_prompt, with_teacher=method.distils)
        if method.regularised:  # instruction rows, with the base model as their teacher
            reg = cfg.max_reg_tokens
            longest = Tokens(max(longest.student, reg), max(longest.teacher, reg), max(longest.answer, reg * 2 // 3))
        live = method.distils and not spec.teacher and cfg.teacher_topk == 0
        return Training(rows=math.ceil(examples * cfg.epochs), global_batch=cfg.batch_size, rank=cfg.rank,
                        tokens=longest, mean_tokens=mean, live_teacher=live, reg_rows=cfg.reg_rows,
                        teacher_model=spec.teacher_model if live and spec.teacher_model != spec.model else None,
                        processes=cfg.processes, planned_steps=run_steps(cfg, examples)[1], **fixed_layout(cfg))

    def check_steps(self, art, plan, where: str, fix: str) -> None:
        """Refuse an adapter whose planned run is shorter than its ``training.min_steps``.

        Args:
            art: the adapter's artifact.
            plan: its plan.
            where: the cell that needs it, for the message.
            fix: the config key where more steps are set, for the message.

        Raises:
            ConfigError: fewer planned steps than the minimum (:func:`pd.train.steps.check_min_steps`).
        """
        from pd.train.steps import check_min_steps, describe_count, run_steps

        cfg = art.spec.train_config()
        if cfg.min_steps:
            examples = self.planned_examples(art, plan)
            check_min_steps(run_steps(cfg, examples)[1], cfg.min_steps, where,
                            "estimated: " + describe_count(cfg, examples), fix)

    def resumable(self, art) -> bool:
        """A retry resumes from the last checkpoint in ``<adapter>.work`` (on a SLURM site written every
        ``checkpoint_minutes``)."""
        return True

    def cache_gb(self, art, plan) -> float:
        """Host memory (GB) of the top-k teacher cache the job reads: k x 6 bytes x questions x tokens per
        answer (the answers' ``max_new_tokens``, at most the teacher's ``max_answer_tokens``); 0 without one."""
        if not art.spec.teacher:
            return 0.0
        teacher = plan.get(art.spec.teacher)
        k = int(teacher.spec.topk)
        if k <= 0:
            return 0.0
        answers = plan.get(teacher.spec.answers).spec
        per_answer = min(answers.sampling.max_new_tokens, teacher.spec.max_answer_tokens)
        return k * CACHE_BYTES_PER_ENTRY * questions_behind(art, plan) * per_answer / 1e9

    def extra_params_b(self, art, plan) -> float:
        """The size of a teacher that runs inside the job (another model and no teacher job's cache)."""
        spec = art.spec
        if not spec.teacher_model or spec.teacher_model == spec.model or spec.teacher:
            return 0.0
        from pd.models import get_spec

        return get_spec(spec.teacher_model, plan.cfg.get("models")).params_b

    def lora_rank(self, art) -> int | None:
        return art.spec.training.get("rank")

    def processes(self, art) -> int | str:
        return art.spec.training.get("processes", 1)


def run_rank(spec_dict: dict, out: str) -> None:
    """One process of a launched adapter job (:func:`pd.train.launch.launch` calls it by name)."""
    from pd import prompts

    spec = AdapterSpec.from_dict(spec_dict)
    prompts.set_overrides(spec.prompt_paths)
    train_adapter(spec, out)


def training_rows(spec: AdapterSpec) -> tuple[list[dict] | None, list[dict]]:
    """The rows an adapter trains on (None for a method that trains on the passages) and its held-out rows.

    Raises:
        DataError: no training rows are left (an empty answers file), or too few for a quintile.
    """
    from pd.errors import DataError
    from pd.io import read_jsonl
    from pd.pipeline.kinds.teacher import STATS_FILE
    from pd.train.rows import quintile_rows, split_heldout

    if not spec.answers:
        return None, []
    rows, heldout = split_heldout(read_jsonl(spec.answers), spec.heldout_fraction)
    if spec.subset != "all":
        rows = quintile_rows(rows, read_jsonl(Path(spec.teacher) / STATS_FILE), spec.subset)
    if not rows:
        raise DataError(f"no training rows left for {spec.method} on {spec.dataset} (check the answers file)")
    return rows, heldout


def train_adapter(spec: AdapterSpec, out: str) -> None:
    """Train ``spec``'s adapter in this process and measure the held-out KL before and after.

    Inside a launch of several processes every rank trains and measures on its own device;
    only rank 0 writes.

    With ``training.checkpoint_minutes`` unset, the job checkpoints as often as its SLURM site says
    (:func:`pd.site.checkpoint_minutes_from_env`); a resumed run's adapter is the same either way.

    Args:
        spec: the adapter job's specification.
        out: the adapter folder.

    Raises:
        DataError: no training rows; ConfigError: invalid training settings, or a run shorter than
            ``training.min_steps`` (refused before training, from the real example count).
        TrainingInterrupted: SIGTERM stopped training after a checkpoint; the job's retry resumes.
    """
    import dataclasses
    import logging

    from pd.io import read_json, write_json
    from pd.models import get_spec, load_model, load_tokenizer
    from pd.site import checkpoint_minutes_from_env
    from pd.train.heldout import heldout_kl
    from pd.train.loop import train
    from pd.train.ranks import is_main_rank, local_device
    from pd.train.rows import HELDOUT_FILE, heldout_examples
    from pd.train.teacher_cache import load_teacher_cache

    log = logging.getLogger("pd.pipeline")
    ds = spec.load_dataset()
    device = local_device()  # a launched rank measures on its own device; one process: the default
    cfg = spec.train_config()
    if "checkpoint_minutes" not in spec.training:  # the SLURM site's default (pd.site); local runs: none
        minutes = checkpoint_minutes_from_env()
        if minutes is not None:
            cfg = dataclasses.replace(cfg, checkpoint_minutes=minutes)
    model_spec = get_spec(spec.model, spec.models_extra)
    rows, heldout = training_rows(spec)
    teacher_name = spec.teacher_model
    teacher_spec = get_spec(teacher_name, spec.models_extra) if teacher_name and teacher_name != spec.model else None

    tok = load_tokenizer(model_spec)
    cache = None
    if cfg.uses_kl and cfg.teacher_topk > 0 and spec.teacher:
        # Built once by the teacher job, shared by cells; read once here for training and the held-out KL.
        cache = load_teacher_cache(Path(spec.teacher) / "topk.safetensors")
    # Another teacher never runs in the student's job: its cached targets stand in for it here too.
    measure = {"limits": cfg.limits()}
    if teacher_spec is not None and cache is not None:
        measure["teacher_cache"] = cache
    examples = heldout_examples(heldout, ds)
    before = None
    if heldout:
        # Every rank measures (the same numbers): ranks reach training together, and a sharded
        # model's "after" pass is collective.
        base = load_model(model_spec, device=device)
        teacher_model = load_model(teacher_spec, device=device) if teacher_spec and cache is None else None
        before = heldout_kl(base, tok, model_spec, examples, cfg.kd_temperature, teacher_model=teacher_model, **measure)
        del base
    result = train(cfg, model_spec, out, rows=rows, dataset=ds, teacher_spec=None if cache else teacher_spec,
                   teacher_cache=cache, min_steps=cfg.min_steps)
    record = {"n_heldout": len(heldout), "temperature": cfg.kd_temperature, "before": before, "after": None,
              "closed_fraction": None, "teacher": teacher_name or spec.model,
              "teacher_targets": f"top-{cfg.teacher_topk} cache" if "teacher_cache" in measure else "full"}
    if heldout and result.model is not None:
        teacher_model = load_model(teacher_spec, device=device) if teacher_spec and cache is None else None
        after = heldout_kl(result.model, tok, model_spec, examples, cfg.kd_temperature, teacher_model=teacher_model,
                           **measure)
        record.update(after=after, closed_fraction=(1 - after / before) if before else None)
        log.info("held-out KL(teacher || student) at T=%g: %.4f -> %.4f (%d pairs)", cfg.kd_temperature, before, after,
                 len(heldout))
    if not is_main_rank():
        return
    # The adapter folder is complete; add the held-out measurement beside pd_meta.json.
    write_json(Path(out) / HELDOUT_FILE, record)
    meta_path = Path(out) / "pd_meta.json"
    if meta_path.is_file():
        meta = read_json(meta_path)
        meta["heldout_kl"] = record
        meta["workflow_spec"] = spec.as_dict()
        write_json(meta_path, meta)
