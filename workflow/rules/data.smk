# Training data: questions about each passage, the expert's answers, teacher statistics.

rule questions:
    output:
        WF.output("questions"),
    params:
        spec=WF.spec("questions"),
    threads: WF.threads("questions")
    priority: WF.priority("questions")
    resources:
        **WF.resources("questions"),
    benchmark:
        WF.benchmark("questions")
    log:
        WF.log("questions"),
    script:
        "../scripts/stage.py"


rule answers:
    input:
        WF.inputs("answers"),
    output:
        WF.output("answers"),
    params:
        spec=WF.spec("answers"),
    threads: WF.threads("answers")
    priority: WF.priority("answers")
    resources:
        **WF.resources("answers"),
    benchmark:
        WF.benchmark("answers")
    log:
        WF.log("answers"),
    script:
        "../scripts/stage.py"


rule teacher:
    input:
        WF.inputs("teacher"),
    output:
        directory(WF.output("teacher")),
    params:
        spec=WF.spec("teacher"),
    threads: WF.threads("teacher")
    priority: WF.priority("teacher")
    resources:
        **WF.resources("teacher"),
    benchmark:
        WF.benchmark("teacher")
    log:
        WF.log("teacher"),
    script:
        "../scripts/stage.py"
