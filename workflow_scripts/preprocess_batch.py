from hms_core.data.io import read_train_csv
from hms_core.preprocess import assign_batches, preprocess_batch
from hms_core.workflow import data_dir, rule_context

with rule_context(snakemake) as smk:
    cfg = smk.params.preprocessing
    root = data_dir(smk.input.source)
    train = read_train_csv(root / "train.csv")
    eeg_ids = assign_batches(train, cfg["n_batches"])[int(smk.wildcards.batch)]
    preprocess_batch(root, train, eeg_ids, smk.output.store, cfg, threads=smk.threads,
                     quarantine_out=smk.output.quarantine, status_path=smk.params.status)
