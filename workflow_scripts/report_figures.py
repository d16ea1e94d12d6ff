from hms_core.report import make_report_figures
from hms_core.workflow import rule_context

with rule_context(snakemake) as smk:
    make_report_figures(".", smk.output.figures, results_path=smk.input.results)
