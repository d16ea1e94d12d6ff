from hms_core import tracking
from hms_core.config.sections import build_section
from hms_core.export.onnx import export_model
from hms_core.workflow import rule_context

# Tracking settings change no result, so they come from the config, not params (no reruns).
with rule_context(snakemake) as smk, tracking.open_job(
        smk.config.get("tracking"), f"export_{smk.wildcards.model}",
        params={"export": build_section("export", smk.params.export)}) as tracker:
    report = export_model(list(smk.input.weights), smk.output.onnx, store_paths=list(smk.input.stores),
                          cfg=smk.params.export, parity_out=smk.output.parity, name=smk.wildcards.model)
    tracker.log_metrics(tracking.numeric_leaves(report), step=0)
    tracker.set_tags(tracking.file_hashes([smk.output.onnx]))
