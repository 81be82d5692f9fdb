"""The one script every rule runs: hand the job's specification to pd.pipeline.run."""

from pd.pipeline.run import run_job

run_job(snakemake.rule, snakemake.params.spec, list(snakemake.output), list(snakemake.log),  # noqa: F821
        threads=snakemake.threads)  # noqa: F821
