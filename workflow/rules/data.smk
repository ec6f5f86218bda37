# Data: download, verify and unpack each dataset's raw files under resources/raw/
# (or read them from `datasets.<name>.path`), and build its tensor cache under
# resources/data/. Generated stand-ins need no raw files.


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
        mem_mb=8000,
        runtime=120,
    params:
        options=lambda w: canonical_json(DATA_OPTIONS[w.dataset]),
        raw=lambda w: data_location(w.dataset),
    shell:
        "python -m mtlrepro prepare {wildcards.dataset} --options {params.options:q} {params.raw} --out {output} > {log} 2>&1"
