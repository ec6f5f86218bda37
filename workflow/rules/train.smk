# Training: one job per run. A run's inputs are its data and the code files its
# numbers depend on (its method's modules and the training core); its params
# hold its spec as canonical JSON. Editing one method's module or its config
# entry therefore reruns that method's runs and nothing else.
#
# Resources: a dataset's `resources:` entry over the config's top-level
# `resources:` (threads, mem_mb, runtime, gpu, gpu_model). Runtime and memory
# grow with the attempt, so a job retried after hitting its time or memory limit
# asks for more; it resumes from the run's checkpoint.pt. On a cluster every run
# of a dataset is in the group train_<dataset>: `--group-components
# train_<dataset>=N` sends N of them out as one job (README, "On a SLURM cluster").

# How often a train job also checkpoints within an epoch. It is passed as a
# resource, not a param: changing it must not retrain finished runs.
CHECKPOINT_MINUTES = str(config.get("checkpoint_minutes", 30))


rule train:
    input:
        data=lambda w: data_file(w.dataset),
        code=lambda w: run_sources(run_of(w)),
    output:
        "results/runs/{dataset}/{arch}/{method}/{noise}/seed{seed}/metrics.json",
    log:
        "results/logs/train/{dataset}/{arch}/{method}/{noise}/seed{seed}.log",
    group:
        lambda w: f"train_{w.dataset}"
    conda:
        "../../envs/mtlrepro.yaml"
    threads: lambda w: TRAIN_JOB[w.dataset]["threads"]
    resources:
        mem_mb=lambda w, attempt: TRAIN_JOB[w.dataset]["mem_mb"] * attempt,
        runtime=lambda w, attempt: TRAIN_JOB[w.dataset]["runtime"] * attempt,
        gpu=lambda w: TRAIN_JOB[w.dataset]["gpu"],
        checkpoint_minutes=CHECKPOINT_MINUTES,
        gpu_model=requested_gpu_model,
    params:
        spec=lambda w: canonical_json(run_of(w).to_json()),
        outdir=lambda w, output: Path(output[0]).parent,
        device=DEVICE,
    shell:
        "python -m mtlrepro train --spec {params.spec:q} --data {input.data} --out {params.outdir}"
        " --device {params.device} --threads {threads}"
        " --checkpoint-minutes {resources.checkpoint_minutes} > {log} 2>&1"
