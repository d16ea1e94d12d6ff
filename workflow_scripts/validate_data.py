from hms_core.config import from_mapping
from hms_core.data.validate import ValidationConfig, validate_dataset
from hms_core.workflow import data_dir, rule_context

with rule_context(snakemake) as smk:
    cfg = from_mapping(ValidationConfig, smk.params.validation, "data.validation")
    # recordings that preprocessing will quarantine must not stop validation
    on_bad = "skip" if smk.params.on_bad_recording == "skip" else cfg.on_bad
    validate_dataset(data_dir(smk.input.source), manifest_out=smk.output.manifest,
                     report_out=smk.output.report, on_bad=on_bad, deep=cfg.deep, threads=smk.threads)
