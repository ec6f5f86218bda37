# mtlrepro: regenerate the tables and figures of the Random Weighting and
# ExcessMTL papers. `snakemake --cores N` runs the studies of config/config.yaml;
# see README.md and config/README.md.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
