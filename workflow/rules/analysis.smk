# Analyses of trained runs: the flatness of each run's selected model (RW Figure 1).


rule flatness:
    input:
        metrics="results/runs/{dataset}/{arch}/{method}/{noise}/seed{seed}/metrics.json",
        data=lambda w: data_file(w.dataset),
        code=flatness_sources,
    output:
        "results/analysis/{dataset}/{arch}/{method}/{noise}/seed{seed}/flatness.json",
    log:
        "results/logs/flatness/{dataset}/{arch}/{method}/{noise}/seed{seed}.log",
    conda:
        "../../envs/mtlrepro.yaml"
    threads: TRAIN_RESOURCES.get("threads", 1)
    resources:
        mem_mb=TRAIN_RESOURCES.get("mem_mb", 2000),
        runtime=TRAIN_RESOURCES.get("runtime", 60),
    params:
        run_dir=lambda w, input: Path(input.metrics).parent,
        batches=FLATNESS.get("batches", 8),
        batch_size=FLATNESS.get("batch_size", 256),
        seed=FLATNESS.get("seed", 0),
    shell:
        "python -m mtlrepro flatness {params.run_dir} --data {input.data} --out {output}"
        " --batches {params.batches} --batch-size {params.batch_size} --seed {params.seed}"
        " --threads {threads} > {log} 2>&1"
