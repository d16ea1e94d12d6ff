from hms_core.train.run import train_fold
from hms_core.workflow import rule_context

with rule_context(snakemake) as smk:
    cfg = {"training": smk.params.training, "models": {smk.wildcards.model: smk.params.model}}
    train_fold(list(smk.input.stores), smk.input.folds, smk.wildcards.model,
               int(smk.wildcards.fold), cfg, weights_out=smk.output.weights,
               oof_out=smk.output.oof, checkpoint_dir=smk.params.checkpoint_dir,
               foundation_path=smk.input.get("foundation"), threads=smk.threads,
               status_path=smk.params.status)
