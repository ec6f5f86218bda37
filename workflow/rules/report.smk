# Results: per-study table (CSV + Markdown) and learning-curve figure (PNG + PDF).


localrules:
    table,
    figure,


rule table:
    input:
        study_metrics,
    output:
        csv=report(
            "results/tables/{study}/summary.csv",
            caption="../report/table.rst",
            category="Tables",
            labels={"study": "{study}"},
        ),
        md="results/tables/{study}/summary.md",
    log:
        "results/logs/table/{study}.log",
    conda:
        "../../envs/mtlrepro.yaml"
    params:
        title=lambda w: STUDIES[w.study].title,
    shell:
        "python -m mtlrepro table --title {params.title:q} --out-csv {output.csv} --out-md {output.md}"
        " {input} > {log} 2>&1"


rule figure:
    input:
        study_metrics,
    output:
        png=report(
            "results/figures/{study}/test_accuracy.png",
            caption="../report/figure.rst",
            category="Figures",
            labels={"study": "{study}"},
        ),
        pdf="results/figures/{study}/test_accuracy.pdf",
    log:
        "results/logs/figure/{study}.log",
    conda:
        "../../envs/mtlrepro.yaml"
    params:
        title=lambda w: STUDIES[w.study].title,
    shell:
        "python -m mtlrepro figure --title {params.title:q} --out-png {output.png} --out-pdf {output.pdf}"
        " {input} > {log} 2>&1"
