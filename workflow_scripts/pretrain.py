from hms_core import tracking
from hms_core.config.sections import build_section
from hms_core.foundation.pretrain import pretrain
from hms_core.workflow import rule_context

# Tracking settings change no result, so they come from the config, not params (no reruns).
with rule_context(snakemake) as smk, tracking.open_job(
        smk.config.get("tracking"), "pretrain", state_dir=smk.params.checkpoint_dir,
        params={"pretrain": build_section("pretrain", smk.params.pretrain)}) as tracker:
    metrics = pretrain(list(smk.input.stores), smk.params.pretrain, out_path=smk.output.encoder,
                       checkpoint_dir=smk.params.checkpoint_dir, folds_csv=smk.input.folds,
                       status_path=smk.params.status, tracker=tracker)
    tracker.log_metrics(tracking.numeric_leaves(metrics), step=0)
