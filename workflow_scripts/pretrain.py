from hms_core.foundation.pretrain import pretrain
from hms_core.workflow import rule_context

with rule_context(snakemake) as smk:
    pretrain(list(smk.input.stores), smk.params.pretrain, out_path=smk.output.encoder,
             checkpoint_dir=smk.params.checkpoint_dir, folds_csv=smk.input.folds,
             status_path=smk.params.status)
