# Data: build each dataset's tensor cache under resources/.


localrules:
    prepare_data,


rule prepare_data:
    input:
        code=lambda w: dataset_sources(w.dataset),
    output:
        "resources/data/{dataset}.pt",
    log:
        "results/logs/prepare/{dataset}.log",
    conda:
        "../../envs/mtlrepro.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        options=lambda w: canonical_json(DATA_OPTIONS[w.dataset]),
    shell:
        "python -m mtlrepro prepare {wildcards.dataset} --options {params.options:q} --out {output} > {log} 2>&1"
