from hms_core import atomic
from hms_core.contract import group_by_model
from hms_core.ensemble.build import build_ensemble
from hms_core.workflow import rule_context

with rule_context(snakemake) as smk:
    metrics = build_ensemble(group_by_model(smk.input.oofs), smk.params.ensemble, out_path=smk.output.ensemble,
                             checkpoint_dir=smk.params.checkpoint_dir, status_path=smk.params.status)
    atomic.write_json(smk.output.metrics, metrics)
