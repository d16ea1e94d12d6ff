from hms_core.data.synthetic.answer_key import ANSWER_KEY_DIR, LATENT_FILE
from hms_core.results import collect_results
from hms_core.workflow import data_dir, rule_context

with rule_context(snakemake) as smk:
    encoder = [smk.input.encoder] if "encoder" in smk.input.keys() else []
    artifacts = [*smk.input.weights, *smk.input.onnx, smk.input.ensemble, *encoder]
    # The answer key lies in the data set that fetch_data recorded (synthetic data only).
    answer_key = (data_dir(smk.input.answer_key_source) / ANSWER_KEY_DIR / LATENT_FILE
                  if "answer_key_source" in smk.input.keys() else None)
    collect_results(smk.output.results, oofs=smk.input.oofs, weights=smk.input.weights,
                    ensemble_metrics=smk.input.ensemble_metrics, parity=smk.input.parity,
                    artifacts=artifacts, transfer=smk.input.get("transfer"),
                    validation=smk.input.validation, quarantine=smk.input.quarantine,
                    status_path="status/run.json", answer_key=answer_key)
