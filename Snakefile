# The experiment matrix. All logic lives in the `pd` package: this file loads and
# validates config.yaml, asks pd.pipeline.plan for the artifacts the selected experiments
# need, and hands each job's specification to pd.pipeline.run through one thin script.
#
#   snakemake --profile profiles/local                      # the experiments in `run`
#   snakemake --profile profiles/local --config run=[main]  # others
#   snakemake --profile profiles/slurm                      # on a SLURM cluster
#   snakemake -n <path>                                     # one artifact (see `pd cells`)
#
# Each job kind is one module of pd/pipeline/kinds/ (its path pattern, specification, plan
# step, run and resource facts). The loop below writes one rule per kind from that registry;
# the local manifest and report rules are written out in workflow/rules/report.smk.

import os
import sys

from pd.errors import PDError
from pd.pipeline.workflow import Workflow

# The repository's config.yaml is the base; --configfile / --config merge on top of it.
configfile: os.path.join(workflow.basedir, "config.yaml")

try:
    _cores = workflow.cores  # unset for some invocations (a dry run without --cores)
except Exception:
    _cores = None

try:
    WF = Workflow(config, workflow.basedir, cores=_cores)
except PDError as err:
    sys.stderr.write(f"\npd: {err}\n\n")
    sys.exit(2)

# A local run's console: one line per job (pd.pipeline.console); `--verbose` shows Snakemake's job blocks.
try:
    from snakemake.logging import logger as _logger
    from pd.pipeline import console as _console

    _console.compact_console(_logger, lambda: _console.wanted(workflow))
except ImportError:  # another Snakemake's logging: its console as it is
    pass

# Each rule's output, benchmark and log strings come from its kind's path pattern
# (WF.output/benchmark/log), with the wildcard constraints inline; a rule's name is its job kind.

localrules: all, manifest, report

# SIGTERM (SLURM's signal ahead of a job's time limit, `scancel`) reaches every process of a job, the shell
# that runs its script too: with the trap that shell waits for the script instead of dying at once, so that
# Snakemake, and with it the job, ends only when the script does: a training job's checkpoint at the end of
# its current step (pd.train.interrupt) is written first. The script itself gets the signal as before.
shell.prefix("set -euo pipefail; trap : TERM; ")


rule all:
    input:
        WF.final_targets(),


# One rule per job kind, named after it: the job's spec, inputs, threads, priority and
# resources come from the plan by its output path; workflow/scripts/stage.py runs it. A kind
# marked local (API embeddings: they need the network, compute nodes have none) runs on the
# host that runs Snakemake.
for _kind in WF.generic_kinds():
    rule:
        name: _kind.name
        localrule: _kind.local
        input: WF.inputs(_kind.name)
        output: directory(WF.output(_kind.name)) if _kind.pattern.directory else WF.output(_kind.name)
        params: spec=WF.spec(_kind.name)
        threads: WF.threads(_kind.name)
        priority: _kind.priority
        resources: **WF.resources(_kind.name)
        benchmark: WF.benchmark(_kind.name)
        log: WF.log(_kind.name)
        script: "workflow/scripts/stage.py"


include: "workflow/rules/report.smk"
