# Knowledge injection: one LoRA adapter per (method, student, data, settings, seed).

rule adapter:
    input:
        WF.inputs("adapter"),
    output:
        directory(WF.output("adapter")),
    params:
        spec=WF.spec("adapter"),
    threads: WF.threads("adapter")
    priority: WF.priority("adapter")
    resources:
        **WF.resources("adapter"),
    benchmark:
        WF.benchmark("adapter")
    log:
        WF.log("adapter"),
    script:
        "../scripts/stage.py"
