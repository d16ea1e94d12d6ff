from pathlib import Path

from hms_core.train.distributed import launch_torchrun, visible_gpu_ids
from hms_core.train.fold_main import fold_args
from hms_core.train.fold import train_fold
from hms_core.tune.space import apply_tuned_params
from hms_core.workflow import rule_context

with rule_context(snakemake) as smk:
    model, fold = smk.wildcards.model, int(smk.wildcards.fold)
    cfg = apply_tuned_params({"training": smk.params.training, "models": {model: smk.params.model}},
                             model, smk.input.get("tuned_params"))  # None: tuning disabled
    # Tracking settings change no result, so they come from the config, not params (no reruns).
    cfg["tracking"] = smk.config.get("tracking")
    job = dict(weights_out=smk.output.weights, oof_out=smk.output.oof,
               checkpoint_dir=smk.params.checkpoint_dir, foundation_path=smk.input.get("foundation"),
               status_path=smk.params.status)
    n_gpus = int(smk.resources.get("gpu", 0) or 0)
    if n_gpus > 1:  # one process per GPU; Snakemake assigns no GPU ids, the allocation's env does
        args = fold_args(list(smk.input.stores), smk.input.folds, model, fold, cfg,
                         config_path=Path(smk.params.checkpoint_dir) / "fold_cfg.json",
                         threads=max(1, smk.threads // n_gpus), **job)
        rc = launch_torchrun(n_gpus, args, gpu_ids=visible_gpu_ids())
        if rc != 0:
            raise RuntimeError(f"torchrun exited with status {rc}")
    else:
        train_fold(list(smk.input.stores), smk.input.folds, model, fold, cfg, **job)
