"""The ``pd`` command: inspect the config and grid, run single cells, report, inject.

Errors that are the user's to fix (PDError) print as one message and exit with status
2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from pd.errors import PDError


def _cfg(args):
    from pd.config import load_config

    return load_config(args.config)


def _config_with_files(args) -> dict:
    """The config with each ``--configfile`` merged on top, then each ``--config KEY=VALUE``, as Snakemake
    merges a profile's ``configfile`` and its command line's ``--config``."""

    from pd.config import deep_merge, load_config
    from pd.config_checks import load_yaml_mapping, parse_config_item

    extra: dict = {}
    for path in getattr(args, "configfile", None) or []:
        extra = deep_merge(extra, load_yaml_mapping(path))
    for item in getattr(args, "values", None) or []:
        extra = deep_merge(extra, parse_config_item(item))
    return load_config(args.config, overrides=extra)


def cmd_validate(args) -> int:
    """Check the config, count the grid and, with a SLURM site, show what each kind of job asks for."""
    cfg = _config_with_files(args)
    from pd.pipeline.plan import build_plan

    plan = build_plan(cfg, list(cfg["experiments"]))
    print(f"{args.config}: valid; {len(cfg['experiments'])} experiments, {sum(len(c) for c in plan.cells.values())} "
          f"cells, {len(plan.artifacts)} artifacts in all; `run` selects {', '.join(cfg['run'])}")
    if cfg.get("slurm_site") is None:
        print("(with --configfile profiles/slurm/site.yaml: the GPUs, memory and time each job asks SLURM for)")
        return 0
    from pd.models import registry
    from pd.pipeline.requests import format_table, resource_table
    from pd.pipeline.resources import load_site

    site = load_site(cfg["slurm_site"])
    models = registry(cfg.get("models"))
    problems = []
    if site.device == "gpu":
        problems = _print_costs(cfg, plan, models, site, _profile_restarts(args.configfile or []))
    else:
        print(f"\nWhat the jobs of all experiments ask for on this site ({site.device}), first attempt; min-max over "
              "the jobs of a kind and model size:")
        for line in format_table(resource_table(plan, models, site)):
            print(line)
    if _offline_problems(cfg, plan, site) or problems:
        return 2
    env = " ".join(f"{k}={v}" for k, v in site.job_env().items())
    print(f"Every job also gets {env} (site.yaml `env:` and `checkpoint_minutes`); fetch the models first: "
          "`pd fetch --check`")
    return 0


def _offline_problems(cfg: dict, plan, site) -> list[str]:
    """On a site whose compute nodes have no network: say what must be fetched and computed beforehand, and print
    what the selected experiments would still need the network for there (:func:`pd.fetch.offline_problems`), one
    line each."""
    if site.compute_network:
        return []
    from pd.fetch import FETCH_COMMAND, network_jobs, offline_problems

    run = " ".join(cfg["run"])
    selected = {p for target in plan.targets(list(cfg["run"])) for p in plan.upstream(target)}
    local = selected.intersection(network_jobs(plan, local=True))
    print(f"Compute nodes have no network (slurm_site.compute_network: false): every model and hub dataset the jobs "
          f"load must be in the shared caches first: `{FETCH_COMMAND} --check --run {run}` on a login node lists "
          f"them, `{FETCH_COMMAND} --run {run}` downloads them"
          + (f"; {len(local)} jobs that call a service (API embeddings) are local rules: they run on the host that "
             "runs snakemake, which needs the network and the service's OPENAI_BASE_URL / OPENAI_API_KEY"
             if local else ""))
    problems = offline_problems(plan, cfg["run"])
    for line in problems:
        print(f"needs network on a compute node: {line}")
    return problems


def _profile_restarts(configfiles: list[str]) -> int | None:
    """``restart-times`` of the Snakemake profile a site file lies in (its ``config.yaml``), if there is one."""
    from pd.config_checks import load_yaml_mapping

    for path in configfiles:
        profile = Path(path).parent / "config.yaml"
        if profile.is_file() and "restart-times" in (data := load_yaml_mapping(profile, "profile")):
            return int(data["restart-times"])
    return None


def _print_costs(cfg: dict, plan, models: dict, site, restarts: int | None) -> list[str]:
    """Print the cost model's table for the selected experiments and the whole grid's totals; return the problems
    (jobs that cannot run as planned), printed one per line. ``restarts``: the profile's ``restart-times``
    (None: attempts are not checked against it)."""
    from pd.cost.calibration import CALIBRATION_PATH
    from pd.pipeline.requests import cost_table, format_cost_table

    selected = sorted({p for target in plan.targets(list(cfg["run"])) for p in plan.upstream(target)})
    gpu = site.gpu()
    print(f"\nWhat the jobs of {', '.join(cfg['run'])} need and ask for on this site: GPUs of {gpu.memory_gb:.1f} GB "
          f"({site.gpu_mem_gb:g} as sold), {gpu.tflops:g} TFLOP/s, {gpu.bandwidth_gbs:g} GB/s; times from "
          f"{CALIBRATION_PATH.name} (H200 measurements), asks = need x 1.5 + loading, first attempt.")
    print("layout: processes x micro-batch x accumulation (ckpt: gradient checkpointing); b: decoding batch")
    rows, problems = cost_table(plan, models, site, selected, restarts=restarts)
    for line in format_cost_table(rows):
        print(line)
    all_rows, all_problems = cost_table(plan, models, site, restarts=restarts)
    print(f"The whole grid ({len(cfg['experiments'])} experiments): "
          f"{sum(r['gpu_hours_need'] for r in all_rows):.0f} GPU-h needed, "
          f"{sum(r['gpu_hours_ask'] for r in all_rows):.0f} asked, {sum(r['jobs'] for r in all_rows)} GPU jobs.")
    for line in sorted(set(problems + all_problems)):
        print(f"cannot run as planned: {line}")
    return problems + all_problems


def cmd_fetch(args) -> int:
    """List what the selected experiments load; download what is missing (or, with --check, only report)."""
    from pd.env import cache_dir
    from pd.fetch import fetch, network_jobs, plan_needs
    from pd.pipeline.plan import build_plan

    cfg = _cfg(args)
    names = args.run or cfg["run"]
    plan = build_plan(cfg, names)
    needs = plan_needs(plan)
    hub = os.environ.get("HF_HOME") or "~/.cache/huggingface (HF_HOME unset)"
    print(f"{', '.join(names)}: {len(needs)} models and datasets; hub cache {hub}, pd cache {cache_dir()}")
    for need in needs:
        print("  " + need.line())
    service, local = network_jobs(plan), network_jobs(plan, local=True)
    if service:
        print(f"note: {len(service)} jobs call an OpenAI-compatible service at run time (openai backend): "
              "they need network, or run them where it is (e.g. on the login node with profiles/local)")
    if local:
        print(f"note: {len(local)} embeddings jobs call the embedding service (retrieval: openai); they are local "
              "rules, run by snakemake on its own host (with network), and retrieval reads their cache")
    missing = [n for n in needs if not n.present]
    offline = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(v, "") not in ("", "0")]
    if offline and missing and not args.check:
        print(f"note: {' and '.join(offline)} set: downloads will fail; on a machine with network run "
              f"`{' '.join(v + '=0' for v in offline)} pd fetch`")
    if args.check or not missing:
        print(f"{len(missing)} missing" + (": run `pd fetch` on a machine with network" if missing else ""))
        return 1 if missing else 0
    left = fetch(missing) + [n for n in missing if n.fetch is None]
    for need in left:
        print("still missing: " + need.line())
    print(f"{len(missing) - len(left)} fetched, {len(left)} still missing")
    return 1 if left else 0


def cmd_merge(args) -> int:
    """Merge a PEFT adapter into its base model's weights: a plain model folder (pd.merge.merge_into).

    Needs no project folder: the config is read only when one is named or ``./config.yaml`` exists;
    without ``--model`` the base model is the one the adapter's config names.
    """
    from pd.adapters import adapter_config, resolve_base
    from pd.config import load_config
    from pd.merge import MERGED_META, merge_into
    from pd.models import get_spec

    config = _inject_config(args)
    extra = load_config(config).get("models") if config else None
    if not Path(args.adapter).is_dir():
        raise PDError(f"adapter folder {args.adapter} does not exist")
    if args.model:
        spec = get_spec(args.model, extra)
    else:
        named = adapter_config(args.adapter).get("base_model_name_or_path")
        spec = resolve_base(named, extra) if isinstance(named, str) else None
        if spec is None:
            raise PDError(f"the adapter's config names base model {named!r}, which is not in the registry; "
                          "give --model (`pd models` lists them)")
    merge_into(spec, args.adapter, args.out, dtype=args.dtype, models_extra=extra)
    print(f"merged {args.adapter} into {spec.name} ({args.dtype}): {args.out}")
    meta = json.loads((Path(args.out) / MERGED_META).read_text(encoding="utf-8"))
    if meta.get("erased_by_cast"):
        print(f"note: rounding to {args.dtype} erased {meta['erased_by_cast'] / max(meta['changed_entries'], 1):.1%} "
              f"of the {meta['changed_entries']} weight entries the adapter changes (changes below half a "
              "unit in the last place); --dtype float32 keeps them all")
    return 0


def cmd_models(args) -> int:
    """List the model registry with a header and whether each model can be loaded here without a download."""
    from pd.fetch import model_need
    from pd.models import registry

    cfg = _cfg(args)
    print(f"{'model':28s} {'family':12s} {'params':>9s}  {'here':7s}  source")
    for name, s in sorted(registry(cfg.get("models")).items()):
        where = {"hub": s.repo, "local": s.path, "gguf_package": f"pip:{s.package}",
                 "random": "random weights"}[s.source]
        here = "present" if model_need(s).present else "missing"
        print(f"{name:28s} {s.family:12s} {s.params_b:8.3f}B  {here:7s}  {where}")
    print("missing: `pd fetch --run EXPERIMENT` downloads what an experiment loads (on a machine with network)")
    return 0


def cmd_datasets(args) -> int:
    from pd.data import load_dataset

    cfg = _cfg(args)
    for name, d in sorted(cfg["datasets"].items()):
        if args.load:
            try:
                ds = load_dataset(name, d)
                print(f"{name:16s} {d['loader']:12s} {len(ds.documents):6d} passages {len(ds.items):6d} questions")
            except PDError as err:
                print(f"{name:16s} {d['loader']:12s} unavailable: {err}")
        else:
            print(f"{name:16s} {json.dumps(d)}")
    return 0


def cmd_cells(args) -> int:
    """List an experiment's cells with the files that make each; optionally build some."""
    from pd.pipeline.plan import build_plan

    cfg = _cfg(args)
    plan = build_plan(cfg, [args.experiment])
    cells = plan.cells[args.experiment]
    chosen = cells
    if args.match:
        chosen = [c for c in cells if all(m in c.cell_id for m in args.match)]
        if not chosen:
            raise PDError(f"no cell of {args.experiment} matches {args.match}; `pd cells {args.experiment}` lists them")
    from collections import Counter

    from pd.pipeline.status import cell_status

    targets = []
    states: Counter = Counter()
    for i, c in enumerate(chosen):
        status = cell_status(plan, c)
        states[status.state] += 1
        print(f"[{i}] {c.cell_id}  {status.line()}")
        for grader, path in c.grades.items():
            print(f"      {grader:10s} {path}")
        for path in status.stale:
            print(f"      stale      {path}")
        targets.extend(c.grades.values())
    counts = plan.count()
    print(f"\n{len(chosen)} of {len(cells)} cells: "
          + ", ".join(f"{states[k]} {k}" for k in ("done", "missing", "stale") if states[k])
          + "; the experiment needs " + ", ".join(f"{n} {k}" for k, n in counts.items() if n))
    if args.run:
        cmd = snakemake_command(args.profile, args.config, args.experiment, targets, args.snakemake_args)
        print("running:", " ".join(cmd[2:]))
        return subprocess.call(cmd)
    if args.snakemake_args:
        raise PDError(f"snakemake arguments after `--` ({' '.join(args.snakemake_args)}) need --run")
    return 0


def snakemake_command(profile: str, config: str, experiment: str, targets: list[str], extra: list[str]) -> list[str]:
    """The Snakemake command line that builds ``targets`` of ``experiment``.

    Snakemake's ``--config`` takes every word after it as a ``key=value`` entry, so the
    targets and the caller's own flags (``-n``, ``--cores 2``) come before it, and it comes last.

    Args:
        profile: the Snakemake profile folder.
        config: ``pd --config``: passed as ``--configfile`` unless it is ``./config.yaml`` (the Snakefile's own).
        experiment: the experiment whose cells are built (``--config run=[experiment]``).
        targets: the files to build.
        extra: further Snakemake arguments, given after ``--`` on the ``pd`` command line.

    Returns:
        The argument list, starting with the Python executable.
    """
    cmd = [sys.executable, "-m", "snakemake", "--profile", profile]
    if Path(config).resolve() != Path("config.yaml").resolve():
        cmd += ["--configfile", str(config)]
    return [*cmd, *extra, *targets, "--config", f"run=[{experiment}]"]


def cmd_report(args) -> int:
    """Re-render the reports from the manifests and per-sample grades already on disk."""
    from pd.pipeline.plan import build_plan
    from pd.report import render_reports
    from pd.report.base_answered import check_rule
    from pd.report.leakage import check_setting
    from pd.report.trackers import check_trackers, config_identity, experiment_runs, log_runs, parse_trackers

    views = {k: v for k, v in (("base_rule", args.base_rule), ("leakage_threshold", args.leakage_threshold))
             if v is not None}  # unset: the report's defaults (pd.report.base_answered, pd.report.leakage)
    if args.base_rule is not None:
        check_rule(args.base_rule)
    if args.leakage_threshold is not None:
        check_setting(args.leakage_threshold)
    trackers = parse_trackers(args.log_to)
    check_trackers(trackers)  # a missing library fails before anything is rendered
    cfg = _cfg(args)
    names = args.experiments or cfg["run"]
    plan = build_plan(cfg, names)
    manifests = [m for m in plan.targets(names) if Path(m).is_file()]
    if not manifests:
        raise PDError(f"no results yet for {', '.join(names)} (no manifest under {cfg['results_dir']}/manifests); "
                      "run `snakemake --profile profiles/local` first")
    absent = sorted(set(plan.targets(names)) - set(manifests))
    if absent:
        print(f"pd: not finished, left out: {', '.join(absent)}", file=sys.stderr)
    result = render_reports(manifests, args.out or cfg["reports_dir"], **views)
    for exp, paths in result.tables.items():
        if args.print:
            print(Path(paths["md"]).read_text(encoding="utf-8"))
        print(f"{exp}: {paths['md']}  {paths['tex']}")
    print(f"report: {result.index}")
    if trackers:
        identity = {e: config_identity(cfg, e, args.config) for e in result.tables}
        for line in log_runs(experiment_runs(manifests, result, identity=identity), trackers, log_dir=args.log_dir):
            print(line)
    return 0


def _inject_config(args) -> str | None:
    """The project config for inject/ask: the one named, else ./config.yaml when there is one."""
    default = os.environ.get("PD_CONFIG", "config.yaml")
    return args.config if args.config != default or Path(args.config).is_file() else None


def cmd_inject(args) -> int:
    """Questions, answers and a PD adapter from a folder of documents (pd.inject)."""
    import logging
    import shlex

    from pd.inject import inject, parse_sets

    logging.basicConfig(level=logging.INFO, format="pd: %(message)s", stream=sys.stderr)
    overrides = parse_sets(args.set or [])
    flags = {"questions": args.questions, "epochs": args.epochs, "lr": args.lr, "rank": args.rank,
             "answer_temperature": args.answer_temperature, "kd_temperature": args.kd_temperature, "seed": args.seed}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    command = "pd " + " ".join(shlex.quote(a) for a in (args.argv or []))
    result = inject(args.docs, args.model, args.out, overrides, config=_inject_config(args), command=command,
                    judge=args.judge)
    kl = result.record["heldout_kl"]
    if result.reused:
        print(f"reused from an earlier run: {', '.join(result.reused)}")
    _print_recall(result.record["recall"], "the adapter")
    if kl.get("after") is not None:
        print(f"held-out KL(teacher || student): {kl['before']:.4f} -> {kl['after']:.4f} on {kl['n_heldout']} pairs")
    print(f"adapter: {result.out}  (model card: {result.out / 'README.md'}; try: pd ask {result.out} \"...\")")
    return 0


def _print_recall(summary: dict, who: str) -> None:
    """The recall summary: overall, then per document when there are several."""
    print(f"{who} {summary['line']}")
    docs = summary.get("documents") or {}
    if len(docs) > 1:
        for doc, c in docs.items():
            print(f"  {doc or '(no document named)'}: {c['line']}")


def cmd_ask(args) -> int:
    """Answer questions with an injected adapter (closed-book, or with BM25 over --rag DOCS), or --check a file."""
    from pd.ask import ask, check, print_answers, print_check, read_questions
    from pd.errors import ConfigError

    if args.check:
        given = [f for f, on in (("questions", args.question), ("--file", args.file), ("--rag", args.rag),
                                 ("--no-adapter", args.no_adapter), ("--compare", args.compare)) if on]
        if given:
            raise ConfigError(f"--check asks its file's questions with and without the adapter and with the passage; "
                              f"it takes no {', '.join(given)}")
        summary, rows = check(args.adapter, args.check, temperature=args.temperature, max_tokens=args.max_tokens,
                              seed=args.seed, config=_inject_config(args))
        print_check(summary, rows, as_json=args.json)
        return 0
    questions = list(args.question) + (read_questions(args.file) if args.file else [])
    if not questions:
        raise ConfigError("pd ask needs a question, --file QUESTIONS or --check QUESTIONS.jsonl")
    rows = ask(args.adapter, questions, rag=args.rag, k=args.k, temperature=args.temperature,
               max_tokens=args.max_tokens, use_adapter=not args.no_adapter, seed=args.seed,
               config=_inject_config(args), compare=args.compare)
    print_answers(rows, as_json=args.json)
    return 0


def cmd_serve(argv: list[str]) -> int:
    """The OpenAI-compatible server: ``pd serve OPTIONS`` is ``python -m pd.serve OPTIONS``."""
    from pd.serve import main as serve_main

    serve_main(argv)
    return 0


def _add_injection_commands(sub) -> None:
    """The practitioner's commands: ``pd inject`` and ``pd ask``."""
    from pd.ask import ASK_DEFAULTS
    from pd.inject import DEFAULTS

    s = sub.add_parser("inject", help="put a folder of .txt/.md documents into a model: PD adapter + model card",
                       description="Generate questions and answers about your documents, train prompt distillation "
                                   "and write a PEFT adapter with a model card. Defaults: pd/inject.py DEFAULTS.")
    s.add_argument("docs", help="folder of .txt/.md documents")
    s.add_argument("--model", required=True, help="model name (`pd models` lists them)")
    s.add_argument("--out", required=True, help="output folder: the adapter, README.md and the data")
    s.add_argument("--questions", type=int, help=f"training questions per document (default {DEFAULTS['questions']})")
    s.add_argument("--epochs", type=float, help=f"default {DEFAULTS['epochs']}")
    s.add_argument("--lr", type=float, help=f"default {DEFAULTS['lr']:g}")
    s.add_argument("--rank", type=int, help=f"LoRA rank (default {DEFAULTS['rank']})")
    s.add_argument("--answer-temperature", type=float,
                   help=f"expert's temperature (default {DEFAULTS['answer_temperature']})")
    s.add_argument("--kd-temperature", type=float,
                   help=f"distillation temperature (default {DEFAULTS['kd_temperature']})")
    s.add_argument("--seed", type=int, help=f"default {DEFAULTS['seed']}")
    s.add_argument("--judge", metavar="MODEL",
                   help="grade the recall (held-out questions asked with the adapter, without it and with the passage) "
                        "with this judge model instead of token F1 against the teacher's answer (pd/recall.py)")
    own = ", ".join(f"{k}={DEFAULTS[k]}" for k in DEFAULTS)
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help=f"any other setting (repeatable), with its default: {own}; or any training setting of "
                        "config.yaml's `training:` (`pd/train/settings.py` lists them with their help)")
    s.add_argument("--config", default=argparse.SUPPRESS, help="project config (model registry, prompts, backend)")
    s.set_defaults(func=cmd_inject)

    s = sub.add_parser("ask", help="answer questions with an injected adapter (--compare, --rag DOCS, --check FILE)",
                       description="Answer questions closed-book with the adapter (or without it, or both with "
                                   "--compare, from one load); --check grades a questions file with gold answers.")
    s.add_argument("adapter", help="the --out folder of `pd inject`")
    s.add_argument("question", nargs="*", help="one or more questions")
    s.add_argument("--file", metavar="QUESTIONS",
                   help="also ask these questions: one per line, or a .jsonl file's 'question' fields")
    s.add_argument("--compare", action="store_true",
                   help="answer each question with and without the adapter (the model is loaded once)")
    s.add_argument("--check", metavar="QUESTIONS.jsonl",
                   help="grade a questions file (JSONL or CSV rows with question, answers and optionally doc) "
                        "with the adapter, without it and with the passage; prints 'recalls N of M questions "
                        "(base K, with the passage T)'")
    s.add_argument("--rag", metavar="DOCS", help="also show the BM25 top-k documents of this folder")
    s.add_argument("--k", type=int, default=ASK_DEFAULTS["k"], help="documents retrieved (default %(default)s)")
    s.add_argument("--temperature", type=float, default=ASK_DEFAULTS["temperature"],
                   help="sampling temperature of the answers, 0 for greedy (default %(default)s)")
    s.add_argument("--max-tokens", type=int, default=ASK_DEFAULTS["max_tokens"],
                   help="the longest answer in tokens (default %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="seed of the answers' sampling (default %(default)s)")
    s.add_argument("--no-adapter", action="store_true", help="answer with the base model, for comparison")
    s.add_argument("--json", action="store_true",
                   help="one JSON line per question (question, answer, retrieved); with --check one per graded "
                        "answer, then the summary")
    s.add_argument("--config", default=argparse.SUPPRESS, help="project config (model registry, prompts, backend)")
    s.set_defaults(func=cmd_ask)


def build_parser() -> argparse.ArgumentParser:
    from pd import __version__

    p = argparse.ArgumentParser(prog="pd", description="Knowledge injection by prompt distillation")
    p.add_argument("--version", action="version", version=f"pd {__version__}")
    p.add_argument("--config", default=os.environ.get("PD_CONFIG", "config.yaml"),
                   help="config file (default: config.yaml)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("validate", help="check config.yaml and count the grid (with a site file: each job's request)")
    s.add_argument("--configfile", action="append", metavar="FILE",
                   help="merged on top of the config, as Snakemake does (e.g. profiles/slurm/site.yaml)")
    s.add_argument("--config", dest="values", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="set top-level config keys, as snakemake --config does (VALUE is YAML), "
                        "e.g. --config 'run=[main]'")
    s.set_defaults(func=cmd_validate)
    s = sub.add_parser("fetch", help="download every model and hub dataset the selected experiments load")
    s.add_argument("--check", action="store_true", help="only report present/missing (exit 1 if something is missing)")
    s.add_argument("--run", nargs="+", metavar="EXPERIMENT", help="experiments (default: the config's `run`)")
    s.set_defaults(func=cmd_fetch)
    s = sub.add_parser("merge", help="merge a LoRA adapter into its base model: a plain model folder")
    s.add_argument("adapter", help="a PEFT adapter folder")
    s.add_argument("--model", help="the base model it was trained on (`pd models` lists them; default: the one "
                                    "the adapter's config names)")
    s.add_argument("--out", required=True, help="the folder to write (new, empty, or an earlier pd merge output)")
    s.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="the merged weights' precision (the merge itself is computed in float32)")
    s.add_argument("--config", default=argparse.SUPPRESS, help="project config (model registry)")
    s.set_defaults(func=cmd_merge)
    s = sub.add_parser("models", help="list the model registry (name, family, size, source, present here or not)")
    s.set_defaults(func=cmd_models)
    s = sub.add_parser("datasets", help="list datasets (--load to count passages and questions)")
    s.add_argument("--load", action="store_true", help="load each dataset and count its passages and test questions")
    s.set_defaults(func=cmd_datasets)
    s = sub.add_parser("cells", help="list an experiment's cells and their target files; --run builds them")
    s.add_argument("experiment", help="an experiment of the config (`pd validate` lists how many cells each has)")
    s.add_argument("match", nargs="*", help="substrings a cell id must contain (e.g. pd s0 bm25)")
    s.add_argument("--run", action="store_true",
                   help="build the listed cells with snakemake; arguments after `--` go to it (-- -n --cores 2)")
    s.add_argument("--profile", default="profiles/local",
                   help="the Snakemake profile --run uses (default %(default)s; profiles/slurm on a cluster)")
    s.set_defaults(func=cmd_cells)
    from pd.report.trackers import DEFAULT_LOG_DIR, TRACKERS

    s = sub.add_parser("report", help="re-render reports from existing results (no model is loaded)")
    s.add_argument("experiments", nargs="*", help="experiments to render (default: the config's `run`)")
    s.add_argument("--print", action="store_true", help="also print the Markdown tables")
    s.add_argument("--out", help="the folder to render into (default: the config's reports_dir), e.g. one "
                                 "self-contained folder to commit: its index.html, tables, figures and rows")
    s.add_argument("--base-rule", help="when the base model has already answered a test question, for the view "
                                       "beside each table: any (correct in any of its closed-book runs; the default) "
                                       "or majority (in more than half)")
    s.add_argument("--leakage-threshold", type=float,
                   help="the leakage audit flags a test question whose nearest generated training question has this "
                        "content-word Jaccard similarity or more, in (0, 1]; default 0.5")
    s.add_argument("--log-to", action="append", metavar="TRACKER",
                   help=f"also log one run per experiment to an experiment tracker: {', '.join(TRACKERS)} "
                        "(repeatable, or a comma list): its accuracy and log-likelihood per cell with ± 2 SE, the "
                        "per-answer rows as a table and the report folder as an artifact, tagged by the grid's axes. "
                        "MLflow writes to MLFLOW_TRACKING_URI, W&B to WANDB_PROJECT (WANDB_MODE=offline works "
                        "offline); see docs/trackers.md")
    s.add_argument("--log-dir", default=DEFAULT_LOG_DIR,
                   help="TensorBoard's folder for --log-to tensorboard (default %(default)s): one run per "
                        "experiment in <log-dir>/<experiment>/<UTC time>/, the report's files beside its events")
    s.set_defaults(func=cmd_report)

    _add_injection_commands(sub)
    sub.add_parser("serve", add_help=False,  # its options are pd.serve's own: main() hands them over unparsed
                   help="an OpenAI-compatible server over a model (and adapter): `pd serve --help` for its options")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return cmd_serve(argv[1:])
    extra: list[str] = []
    if "--" in argv:  # `pd cells EXP FILTER --run -- -n --cores 2`: what follows `--` goes to Snakemake
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command == "ask" and not any(a.startswith("-") for a in rest):
        args.question = [*args.question, *rest]  # `pd ask OUT --compare "Q"`: argparse fills a '*' positional early
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.argv = argv
    args.snakemake_args = extra
    if extra and args.command != "cells":
        print(f"pd: arguments after `--` ({' '.join(extra)}) are only for `pd cells ... --run`", file=sys.stderr)
        return 2
    try:
        return args.func(args) or 0
    except PDError as err:
        print(f"pd: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `pd models | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
