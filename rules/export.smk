# ONNX export with parity checks against PyTorch, and the final results file.


rule export_model:
    input:
        weights=lambda wc: model_weights(wc.model),
        stores=all_stores(),
    output:
        onnx="models/onnx/{model}.onnx",
        parity="results/onnx/{model}.json",
    params:
        export=config["export"],
    threads: config["compute"]["train_threads"]
    conda:
        "../envs/export.yaml"
    log:
        "logs/export_model/{model}.log",
    script:
        "../workflow_scripts/export_model.py"


rule export_ensemble:
    input:
        weights=all_weights(),
        ensemble=rules.ensemble.output.ensemble,
        source=rules.fetch_data.output.source,
        stores=all_stores(),
    output:
        onnx="models/onnx/ensemble.onnx",
        parity="results/onnx/ensemble.json",
    params:
        export=config["export"],
        preprocessing=config["preprocessing"],
    threads: config["compute"]["train_threads"]
    conda:
        "../envs/export.yaml"
    log:
        "logs/export_ensemble/export_ensemble.log",
    script:
        "../workflow_scripts/export_ensemble.py"


rule export:
    input:
        expand("models/onnx/{model}.onnx", model=enabled_models()),
        rules.export_ensemble.output.onnx,


def results_inputs(wildcards):
    inputs = {
        "validation": rules.validate_data.output.report,
        "weights": all_weights(),
        "oofs": all_oofs(),
        "ensemble": rules.ensemble.output.ensemble,
        "ensemble_metrics": rules.ensemble.output.metrics,
        "onnx": expand("models/onnx/{model}.onnx", model=enabled_models()) + [rules.export_ensemble.output.onnx],
        "parity": expand("results/onnx/{model}.json", model=enabled_models()) + [rules.export_ensemble.output.parity],
        "quarantine": expand("data/processed/batch_{batch}.quarantine.json", batch=batch_ids()),
    }
    if config["pretrain"]["enabled"]:
        inputs["encoder"] = FOUNDATION
        if config["transfer"]["enabled"]:
            inputs["transfer"] = rules.foundation_transfer.output.study
    if has_answer_key():
        # the script reads <data dir>/answer_key/latent.parquet for the gap table's floor
        inputs["answer_key_source"] = rules.fetch_data.output.source
    return inputs


rule results:
    input:
        unpack(results_inputs),
    output:
        results="training_results.json",
    conda:
        "../envs/export.yaml"
    log:
        "logs/results/results.log",
    script:
        "../workflow_scripts/results.py"
