# Training data: questions about each passage, the expert's answers, teacher statistics.

rule questions:
    output:
        f"{R}/{{dataset}}/questions/{{stem}}.jsonl",
    params:
        spec=WF.spec("questions"),
    threads: WF.threads("questions")
    resources:
        **WF.resources("questions"),
    benchmark:
        f"{R}/benchmarks/{{dataset}}/questions/{{stem}}.tsv"
    log:
        f"{R}/logs/{{dataset}}/questions/{{stem}}.log",
    script:
        "../scripts/stage.py"


rule answers:
    input:
        WF.inputs("answers"),
    output:
        f"{R}/{{dataset}}/answers/{{qstem}}/{{stem}}.jsonl",
    params:
        spec=WF.spec("answers"),
    threads: WF.threads("answers")
    resources:
        **WF.resources("answers"),
    benchmark:
        f"{R}/benchmarks/{{dataset}}/answers/{{qstem}}/{{stem}}.tsv"
    log:
        f"{R}/logs/{{dataset}}/answers/{{qstem}}/{{stem}}.log",
    script:
        "../scripts/stage.py"


rule teacher:
    input:
        WF.inputs("teacher"),
    output:
        directory(f"{R}/{{dataset}}/teacher/{{qstem}}/{{astem}}/{{stem}}"),
    params:
        spec=WF.spec("teacher"),
    threads: WF.threads("teacher")
    resources:
        **WF.resources("teacher"),
    benchmark:
        f"{R}/benchmarks/{{dataset}}/teacher/{{qstem}}/{{astem}}/{{stem}}.tsv"
    log:
        f"{R}/logs/{{dataset}}/teacher/{{qstem}}/{{astem}}/{{stem}}.log",
    script:
        "../scripts/stage.py"
