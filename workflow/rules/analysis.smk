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
    # the resources of the dataset's train jobs (common.smk): a Hessian of a model
    # that trains on a GPU is computed on one too
    threads: lambda w: TRAIN_JOB[w.dataset]["threads"]
    resources:
        mem_mb=lambda w, attempt: TRAIN_JOB[w.dataset]["mem_mb"] * attempt,
        runtime=lambda w, attempt: TRAIN_JOB[w.dataset]["runtime"] * attempt,
        gpu=lambda w: TRAIN_JOB[w.dataset]["gpu"],
        gpu_model=requested_gpu_model,
    params:
        run_dir=lambda w, input: Path(input.metrics).parent,
        batches=FLATNESS.get("batches", 8),
        batch_size=FLATNESS.get("batch_size", 256),
        seed=FLATNESS.get("seed", 0),
    shell:
        "python -m mtlrepro flatness {params.run_dir} --data {input.data} --out {output}"
        " --batches {params.batches} --batch-size {params.batch_size} --seed {params.seed}"
        " --threads {threads} > {log} 2>&1"
