from hms_core import atomic, tracking
from hms_core.config.sections import build_section
from hms_core.contract import group_by_model
from hms_core.ensemble.build import build_ensemble
from hms_core.workflow import rule_context

# Tracking settings change no result, so they come from the config, not params (no reruns).
with rule_context(snakemake) as smk, tracking.open_job(
        smk.config.get("tracking"), "ensemble", state_dir=smk.params.checkpoint_dir,
        params={"ensemble": build_section("ensemble", smk.params.ensemble)}) as tracker:
    metrics = build_ensemble(group_by_model(smk.input.oofs), smk.params.ensemble, out_path=smk.output.ensemble,
                             checkpoint_dir=smk.params.checkpoint_dir, status_path=smk.params.status)
    atomic.write_json(smk.output.metrics, metrics)
    tracker.log_metrics(tracking.numeric_leaves(metrics), step=0)
