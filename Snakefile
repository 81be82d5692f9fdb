# The experiment matrix. All logic lives in the `pd` package: this file loads and
# validates config.yaml, asks pd.plan for the artifacts the selected experiments need,
# and hands each job's specification to pd.stages through one thin script.
#
#   snakemake --profile profiles/local                      # the experiments in `run`
#   snakemake --profile profiles/local --config run=[main]  # others
#   snakemake --profile profiles/slurm                      # on a SLURM cluster
#   snakemake -n <path>                                     # one artifact (see `pd cells`)
#
# To add a job kind: its path pattern in pd/paths.py, its specification in pd/jobs.py, the
# plan's method that builds it (pd/plan.py), its stage (pd/stages.py), its resource
# estimate (pd/resources.py) and a rule in workflow/rules/ like the ones there.

import os
import sys

from pd.errors import PDError
from pd.workflow import Workflow

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

# Each rule's output, benchmark and log strings come from pd.paths (WF.output/benchmark/log),
# with the wildcard constraints inline; a rule's name is its job kind everywhere.

localrules: all, manifest, report


rule all:
    input:
        WF.final_targets(),


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
