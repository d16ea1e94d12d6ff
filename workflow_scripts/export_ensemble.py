from hms_core import tracking
from hms_core.config.sections import build_section
from hms_core.contract import group_by_model
from hms_core.export.onnx import export_ensemble
from hms_core.workflow import data_dir, rule_context

# Tracking settings change no result, so they come from the config, not params (no reruns).
with rule_context(snakemake) as smk, tracking.open_job(
        smk.config.get("tracking"), "export_ensemble",
        params={"export": build_section("export", smk.params.export)}) as tracker:
    report = export_ensemble(group_by_model(smk.input.weights), smk.input.ensemble, None, smk.output.onnx,
                             preprocessing=smk.params.preprocessing, data_dir=data_dir(smk.input.source),
                             store_paths=list(smk.input.stores), cfg=smk.params.export,
                             parity_out=smk.output.parity)
    tracker.log_metrics(tracking.numeric_leaves(report), step=0)
    tracker.set_tags(tracking.file_hashes([smk.output.onnx]))
