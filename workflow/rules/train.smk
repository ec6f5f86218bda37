# Training: one job per run. A run's inputs are its data and the code files its
# numbers depend on (its method's modules and the training core); its params
# hold its spec as canonical JSON. Editing one method's module or its config
# entry therefore reruns that method's runs and nothing else.


rule train:
    input:
        data=lambda w: data_file(w.dataset),
        code=lambda w: run_sources(run_of(w)),
    output:
        "results/runs/{dataset}/{arch}/{method}/{noise}/seed{seed}/metrics.json",
    log:
        "results/logs/train/{dataset}/{arch}/{method}/{noise}/seed{seed}.log",
    conda:
        "../../envs/mtlrepro.yaml"
    threads: TRAIN_RESOURCES.get("threads", 1)
    resources:
        mem_mb=TRAIN_RESOURCES.get("mem_mb", 2000),
        runtime=TRAIN_RESOURCES.get("runtime", 60),
        gpu=TRAIN_RESOURCES.get("gpu", 0),
    params:
        spec=lambda w: canonical_json(run_of(w).to_json()),
        outdir=lambda w, output: Path(output[0]).parent,
        device=DEVICE,
    shell:
        "python -m mtlrepro train --spec {params.spec:q} --data {input.data} --out {params.outdir}"
        " --device {params.device} --threads {threads} > {log} 2>&1"
