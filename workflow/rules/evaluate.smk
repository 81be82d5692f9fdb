# Retrieval, answers to the test questions, grades, the forgetting check.

rule retrieval:
    output:
        WF.output("retrieval"),
    params:
        spec=WF.spec("retrieval"),
    threads: WF.threads("retrieval")
    priority: WF.priority("retrieval")
    resources:
        **WF.resources("retrieval"),
    benchmark:
        WF.benchmark("retrieval")
    log:
        WF.log("retrieval"),
    script:
        "../scripts/stage.py"


rule evaluate:
    input:
        WF.inputs("evaluate"),
    output:
        WF.output("evaluate"),
    params:
        spec=WF.spec("evaluate"),
    threads: WF.threads("evaluate")
    priority: WF.priority("evaluate")
    resources:
        **WF.resources("evaluate"),
    benchmark:
        WF.benchmark("evaluate")
    log:
        WF.log("evaluate"),
    script:
        "../scripts/stage.py"


rule grade:
    input:
        WF.inputs("grade"),
    output:
        WF.output("grade"),
    params:
        spec=WF.spec("grade"),
    threads: WF.threads("grade")
    priority: WF.priority("grade")
    resources:
        **WF.resources("grade"),
    benchmark:
        WF.benchmark("grade")
    log:
        WF.log("grade"),
    script:
        "../scripts/stage.py"


rule capability:
    input:
        WF.inputs("capability"),
    output:
        WF.output("capability"),
    params:
        spec=WF.spec("capability"),
    threads: WF.threads("capability")
    priority: WF.priority("capability")
    resources:
        **WF.resources("capability"),
    benchmark:
        WF.benchmark("capability")
    log:
        WF.log("capability"),
    script:
        "../scripts/stage.py"
