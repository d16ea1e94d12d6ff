from hms_core.results import collect_results
from hms_core.workflow import rule_context

with rule_context(snakemake) as smk:
    encoder = [smk.input.encoder] if "encoder" in smk.input.keys() else []
    artifacts = [*smk.input.weights, *smk.input.onnx, smk.input.ensemble, *encoder]
    collect_results(smk.output.results, oofs=smk.input.oofs, weights=smk.input.weights,
                    ensemble_metrics=smk.input.ensemble_metrics, parity=smk.input.parity,
                    artifacts=artifacts, transfer=smk.input.get("transfer"),
                    validation=smk.input.validation, quarantine=smk.input.quarantine,
                    status_path="status/run.json")
