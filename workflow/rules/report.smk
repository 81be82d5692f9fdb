# Per-experiment manifests (which grade files make which table cell) and the reports.

rule manifest:
    input:
        WF.inputs("manifest"),
    output:
        WF.output("manifest"),
    params:
        spec=WF.spec("manifest"),
    log:
        WF.log("manifest"),
    script:
        "../scripts/stage.py"


rule report:
    input:
        WF.inputs("report"),
    output:
        report(WF.output("report"), caption="../report/index.rst", category="Overview"),
        # Each experiment's table, with the caption the report writes beside it (for `snakemake --report`).
        [report(f"{WF.cfg['reports_dir']}/{e}/table.md", category=e,
                caption=os.path.abspath(f"{WF.cfg['reports_dir']}/{e}/table.rst")) for e in WF.cfg["run"]],
    params:
        spec=WF.spec("report"),
    log:
        WF.log("report"),
    script:
        "../scripts/stage.py"
