# Retrieval, answers to the test questions, grades.

rule retrieval:
    output:
        f"{R}/{{dataset}}/retrieval/{{stem}}.jsonl",
    params:
        spec=WF.spec("retrieval"),
    threads: WF.threads("retrieval")
    resources:
        **WF.resources("retrieval"),
    benchmark:
        f"{R}/benchmarks/{{dataset}}/retrieval/{{stem}}.tsv"
    log:
        f"{R}/logs/{{dataset}}/retrieval/{{stem}}.log",
    script:
        "../scripts/stage.py"


rule evaluate:
    input:
        WF.inputs("eval"),
    output:
        f"{R}/{{dataset}}/eval/{{rest}}.jsonl",
    params:
        spec=WF.spec("eval"),
    threads: WF.threads("eval")
    resources:
        **WF.resources("eval"),
    benchmark:
        f"{R}/benchmarks/{{dataset}}/eval/{{rest}}.tsv"
    log:
        f"{R}/logs/{{dataset}}/eval/{{rest}}.log",
    script:
        "../scripts/stage.py"


rule grade:
    input:
        WF.inputs("grade"),
    output:
        f"{R}/{{dataset}}/grades/{{rest}}.{{grader}}.jsonl",
    params:
        spec=WF.spec("grade"),
    threads: WF.threads("grade")
    resources:
        **WF.resources("grade"),
    benchmark:
        f"{R}/benchmarks/{{dataset}}/grades/{{rest}}.{{grader}}.tsv"
    log:
        f"{R}/logs/{{dataset}}/grades/{{rest}}.{{grader}}.log",
    script:
        "../scripts/stage.py"


rule capability:
    input:
        WF.inputs("capability"),
    output:
        f"{R}/capability/{{rest}}.jsonl",
    params:
        spec=WF.spec("capability"),
    threads: WF.threads("capability")
    resources:
        **WF.resources("capability"),
    benchmark:
        f"{R}/benchmarks/capability/{{rest}}.tsv"
    log:
        f"{R}/logs/capability/{{rest}}.log",
    script:
        "../scripts/stage.py"
