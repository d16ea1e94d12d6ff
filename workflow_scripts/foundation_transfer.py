from hms_core.foundation.transfer import transfer_study
from hms_core.workflow import rule_context

with rule_context(snakemake) as smk:
    transfer_study(list(smk.input.stores), smk.input.folds, smk.input.encoder,
                   smk.params.transfer, out_json=smk.output.study,
                   checkpoint_dir=smk.params.checkpoint_dir)
