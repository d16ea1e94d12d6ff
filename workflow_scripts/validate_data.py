from hms_core.data.validate import validate_dataset
from hms_core.workflow import data_dir, rule_context

with rule_context(snakemake) as smk:
    validate_dataset(data_dir(smk.input.source), manifest_out=smk.output.manifest,
                     report_out=smk.output.report, on_bad=smk.params.on_bad,
                     deep=smk.params.validation["deep"], threads=smk.threads)
