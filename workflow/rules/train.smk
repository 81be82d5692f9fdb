# Knowledge injection: one LoRA adapter per (method, student, data, settings, seed).

rule adapter:
    input:
        WF.inputs("adapter"),
    output:
        directory(f"{R}/{{dataset}}/adapters/{{method}}/{{model}}/{{stem}}"),
    params:
        spec=WF.spec("adapter"),
    threads: WF.threads("adapter")
    resources:
        **WF.resources("adapter"),
    benchmark:
        f"{R}/benchmarks/{{dataset}}/adapters/{{method}}/{{model}}/{{stem}}.tsv"
    log:
        f"{R}/logs/{{dataset}}/adapters/{{method}}/{{model}}/{{stem}}.log",
    script:
        "../scripts/stage.py"
