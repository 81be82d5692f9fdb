# Per-experiment manifests (which grade files make which table cell) and the reports.

rule manifest:
    input:
        WF.inputs("manifest"),
    output:
        f"{R}/manifests/{{experiment}}.json",
    params:
        spec=WF.spec("manifest"),
    script:
        "../scripts/stage.py"


rule report:
    input:
        WF.inputs("report"),
    output:
        f"{WF.cfg['reports_dir']}/index.html",
    params:
        spec=WF.spec("report"),
    script:
        "../scripts/stage.py"
