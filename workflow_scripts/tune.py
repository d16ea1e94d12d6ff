from hms_core.tune.search import tune_model
from hms_core.workflow import rule_context

with rule_context(snakemake) as smk:
    model = smk.wildcards.model
    cfg = {"training": smk.params.training, "models": {model: smk.params.model},
           "tuning": smk.params.tuning}
    tune_model(list(smk.input.stores), smk.input.folds, model, cfg, fold=int(smk.wildcards.fold),
               out_params=smk.output.params, study_db=smk.params.study_db,
               work_dir=smk.params.work_dir, foundation_path=smk.input.get("foundation"),
               status_path=smk.params.status)
