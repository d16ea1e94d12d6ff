from hms_core import atomic
from hms_core.ensemble.stacking import build_ensemble
from hms_core.workflow import rule_context

with rule_context(snakemake) as smk:
    n_folds = smk.params.n_folds
    oofs = {m: smk.input.oofs[i * n_folds:(i + 1) * n_folds] for i, m in enumerate(smk.params.models)}
    metrics = build_ensemble(oofs, smk.params.ensemble, out_path=smk.output.ensemble,
                             checkpoint_dir=smk.params.checkpoint_dir, threads=smk.threads,
                             status_path=smk.params.status)
    atomic.write_json(smk.output.metrics, metrics)
