from hms_core import atomic
from hms_core.config import from_mapping
from hms_core.data.folds import FoldsConfig, make_folds
from hms_core.data.io import read_train_csv
from hms_core.workflow import data_dir, rule_context

with rule_context(snakemake) as smk:
    cfg = from_mapping(FoldsConfig, smk.params.folds, "folds")
    train = read_train_csv(data_dir(smk.input.source) / "train.csv")
    folds = make_folds(train, cfg.n_folds, cfg.seed)
    with atomic.atomic_path(smk.output.folds) as tmp:
        folds.to_csv(tmp, index=False)
