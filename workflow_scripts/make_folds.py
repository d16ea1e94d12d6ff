from hms_core.data.folds import write_folds
from hms_core.workflow import data_dir, rule_context

with rule_context(snakemake) as smk:
    write_folds(data_dir(smk.input.source) / "train.csv", smk.output.folds, smk.params.folds)
