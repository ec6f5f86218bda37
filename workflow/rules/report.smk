# Results: each study's tables (CSV + Markdown + LaTeX) and figures (PNG + PDF),
# grouped by paper and study in `snakemake --report`.


localrules:
    study_table,
    study_figure,
    study_twin,
    scorecard,


rule study_table:
    input:
        study_inputs,
    output:
        csv=report(
            "results/tables/{paper}/{study}/{kind}.csv",
            caption="../report/table.rst",
            category="{paper}",
            subcategory="{study}",
            labels={"study": "{study}", "output": "{kind}", "format": "csv"},
        ),
        md=report(
            "results/tables/{paper}/{study}/{kind}.md",
            caption="../report/table.rst",
            category="{paper}",
            subcategory="{study}",
            labels={"study": "{study}", "output": "{kind}", "format": "markdown"},
        ),
        tex="results/tables/{paper}/{study}/{kind}.tex",
    log:
        "results/logs/table/{paper}/{study}/{kind}.log",
    conda:
        "../../envs/mtlrepro.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        study=study_json,
        out=lambda w: f"results/tables/{w.paper}/{w.study}/{w.kind}",
    shell:
        "python -m mtlrepro table {wildcards.kind} --study {params.study:q} --out {params.out} {input} > {log} 2>&1"


rule study_figure:
    input:
        study_inputs,
    output:
        png=report(
            "results/figures/{paper}/{study}/{kind}.png",
            caption="../report/figure.rst",
            category="{paper}",
            subcategory="{study}",
            labels={"study": "{study}", "output": "{kind}"},
        ),
        pdf="results/figures/{paper}/{study}/{kind}.pdf",
    log:
        "results/logs/figure/{paper}/{study}/{kind}.log",
    conda:
        "../../envs/mtlrepro.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        study=study_json,
        out=lambda w: f"results/figures/{w.paper}/{w.study}/{w.kind}",
    shell:
        "python -m mtlrepro figure {wildcards.kind} --study {params.study:q} --out {params.out} {input} > {log} 2>&1"


rule study_twin:
    input:
        study_metrics,
    output:
        csv=report(
            "results/tables/{paper}/{study}/{kind}_vs_published.csv",
            caption="../report/twin.rst",
            category="{paper}",
            subcategory="{study}",
            labels={
                "study": "{study}",
                "output": "{kind} vs published",
                "format": "csv",
            },
        ),
        md="results/tables/{paper}/{study}/{kind}_vs_published.md",
        tex="results/tables/{paper}/{study}/{kind}_vs_published.tex",
    log:
        "results/logs/twin/{paper}/{study}/{kind}.log",
    conda:
        "../../envs/mtlrepro.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        study=study_json,
        out=lambda w: f"results/tables/{w.paper}/{w.study}/{w.kind}_vs_published",
    shell:
        "python -m mtlrepro twin {wildcards.kind} --study {params.study:q} --out {params.out} {input} > {log} 2>&1"


rule scorecard:
    input:
        metrics=lambda w: sorted(run.metrics_file for run in RUNS.values()),
        analyses=all_analyses,
        reference=REFERENCE_FILES,
    output:
        report(
            "results/scorecard.md",
            caption="../report/scorecard.rst",
            category="scorecard",
        ),
    log:
        "results/logs/scorecard.log",
    conda:
        "../../envs/mtlrepro.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        config=canonical_json(config),
        schema=Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml",
    shell:
        "python -m mtlrepro scorecard --config {params.config:q} --schema {params.schema}"
        " --metrics {input.metrics} --analyses {input.analyses} --out {output} > {log} 2>&1"
