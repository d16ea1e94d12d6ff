# Path helpers and the lists of batches, models and folds, all derived from config.
import json
from pathlib import Path

wildcard_constraints:
    batch=r"\d{4}",
    fold=r"\d+",


STATUS = "status/run.json"
SOURCE = "data/source.json"
STORE = "data/processed/batch_{batch}.zarr"
WEIGHTS = "models/final/{model}_fold{fold}.pth"
OOF = "oof/{model}_fold{fold}.parquet"
FOUNDATION = "models/final/eeg_foundation_pretrained.pth"
TUNED_PARAMS = "models/tuning/{model}_fold{fold}_params.json"


def batch_ids():
    return [f"{b:04d}" for b in range(config["preprocessing"]["n_batches"])]


def enabled_models():
    return [name for name, spec in config["models"].items() if spec.get("enabled", True)]


def fold_ids():
    return list(range(config["folds"]["n_folds"]))


def all_stores(wildcards=None):
    return expand(STORE, batch=batch_ids())


def model_weights(model):
    return expand(WEIGHTS, model=model, fold=fold_ids())


def model_oofs(model):
    return expand(OOF, model=model, fold=fold_ids())


def all_weights():
    return [path for model in enabled_models() for path in model_weights(model)]


def all_oofs():
    return [path for model in enabled_models() for path in model_oofs(model)]


def foundation_targets():
    if not config["pretrain"]["enabled"]:
        return []
    targets = [FOUNDATION]
    if config["transfer"]["enabled"]:
        targets.append("results/foundation_transfer.json")
    return targets


def has_answer_key():
    """A generated synthetic set keeps its latent class vectors (the answer key)."""
    data = config["data"]
    return data["source"] == "synthetic" and bool(data["synthetic"].get("save_answer_key", True))


def uses_foundation(model):
    return bool(config["pretrain"]["enabled"]) and config["models"][model].get("foundation_mode") is not None


def tuned_models():
    """Models searched by the tune rule: none unless tuning.enabled."""
    tuning = config["tuning"]
    if not tuning["enabled"]:
        return []
    chosen = tuning.get("models")
    return [m for m in enabled_models() if chosen is None or m in chosen]


def all_tuned_params():
    return [path for model in tuned_models()
            for path in expand(TUNED_PARAMS, model=model, fold=fold_ids())]


def tuning_study(model, fold):
    """The Optuna study (SQLite) of one model and outer fold; resumed, never deleted."""
    return f"models/tuning/{model}_fold{fold}.db"


def tune_inputs(wildcards):
    inputs = {"stores": all_stores(), "folds": "data/folds.csv"}
    if uses_foundation(wildcards.model):
        inputs["foundation"] = FOUNDATION
    return inputs


def train_inputs(wildcards):
    inputs = tune_inputs(wildcards)
    if wildcards.model in tuned_models():  # the best parameters of this model and fold
        inputs["tuned_params"] = expand(TUNED_PARAMS, model=wildcards.model, fold=wildcards.fold)[0]
    return inputs


def checkpoint_dir(job):
    """Resumable state of a long job; never a rule output, so Snakemake never deletes it."""
    return f"models/checkpoints/{job}"


def gpus_per_job():
    return int(config["compute"]["gpus_per_job"])


def print_summary():
    results = Path("training_results.json")
    if results.exists():
        from hms_core.results import format_summary

        print(format_summary(json.loads(results.read_text())))
