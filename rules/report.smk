# Figures for `snakemake --report report.html`; not part of `all`, built on demand.


rule report_figures:
    input:
        results=rules.results.output.results,
    output:
        figures=report(
            directory("results/figures"),
            patterns=["{name}.png", "{name}.csv"],
            caption="../config/report_caption.rst",
            category="Results",
        ),
    conda:
        "../envs/export.yaml"
    log:
        "logs/report_figures/report_figures.log",
    script:
        "../workflow_scripts/report_figures.py"
