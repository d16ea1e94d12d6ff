"""Export the trained models and the ensemble to ONNX and prove they compute the same thing.

Each export traces the torch module with ``torch.onnx.export(..., dynamo=False)`` (the
TorchScript exporter: no onnxscript, seconds for a GRU), writes preprocessing and member
facts into the model's ``metadata_props``, runs ``onnx.checker.check_model(full_check=True)``
and compares ONNX Runtime with PyTorch on real windows (:mod:`hms_core.export.parity`). The file
only appears (atomically) when the largest probability difference is within
``export.parity_atol``; otherwise :class:`~hms_core.export.parity.ParityError` is raised.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from hms_core import atomic
from hms_core.config import from_mapping
from hms_core.contract import CLASSES, RAW_CHANNELS, SPEC_COLUMNS
from hms_core.errors import DataError
from hms_core.export.config import ExportConfig
from hms_core.export.graph import ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS, EnsembleGraph, FoldAverage
from hms_core.export.parity import check_parity, parity_report, parity_rows, train_windows
from hms_core.export.runtime import METADATA_PREFIX
from hms_core.store import open_window_source

logger = logging.getLogger(__name__)

EXPORT_FORMAT = 1


def load_fold_models(weight_paths: Sequence[str | os.PathLike]) -> FoldAverage:
    """Rebuild one model's fold networks (``train_fold`` weights files) as a :class:`FoldAverage`."""
    from hms_core.train.fold import load_trained

    if not weight_paths:
        raise DataError("weights", "no weights files given")
    models = [load_trained(p) for p in weight_paths]
    names = {type(m).__name__ for m in models}
    if len(names) != 1:
        raise DataError(weight_paths[0], f"weights files hold different model types: {sorted(names)}")
    try:
        return FoldAverage(models).eval()
    except ValueError as err:
        raise DataError(weight_paths[0], str(err)) from err


def _write_onnx(module: torch.nn.Module, example: tuple[torch.Tensor, ...], tmp: Path, *,
                input_names: Sequence[str], output_names: Sequence[str], opset: int,
                metadata: Mapping[str, Any]) -> None:
    import onnx

    module.eval()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's fused inference path (e.g. in CBraMod) has no ONNX export
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        _trace(module, example, tmp, input_names=input_names, output_names=output_names, opset=opset)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    model = onnx.load(str(tmp))
    _restore_unused_inputs(model, example, input_names)
    for key, value in metadata.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = METADATA_PREFIX + key, json.dumps(value)
    onnx.save(model, str(tmp))
    onnx.checker.check_model(str(tmp), full_check=True)


def _trace(module: torch.nn.Module, example: tuple[torch.Tensor, ...], tmp: Path, *,
           input_names: Sequence[str], output_names: Sequence[str], opset: int) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # Shape checks traced as constants are fine (shapes are fixed but the batch), and the
        # GRU batch-size warning is covered by running other batch sizes in the parity check.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
        warnings.filterwarnings("ignore", message=".*Constant folding.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # dynamo=False is deliberate
        torch.onnx.export(
            module, example, str(tmp), input_names=list(input_names), output_names=list(output_names),
            dynamic_axes={n: {0: "batch"} for n in (*input_names, *output_names)},
            opset_version=opset, do_constant_folding=True, dynamo=False)


def _restore_unused_inputs(model, example: tuple[torch.Tensor, ...], input_names: Sequence[str]) -> None:
    """Put back inputs the exporter dropped because no kept member reads them.

    The graph's signature is part of its contract (``ensemble.onnx`` always takes the raw
    window and the Kaggle spectrogram), whichever members the selection kept.
    """
    import onnx

    present = {i.name for i in model.graph.input}
    for name, tensor in zip(input_names, example):
        if name not in present:
            shape = ["batch", *tensor.shape[1:]]
            model.graph.input.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(tensor.numpy().dtype), shape))
    order = {n: i for i, n in enumerate(input_names)}
    inputs = sorted(model.graph.input, key=lambda i: order.get(i.name, len(order)))
    del model.graph.input[:]
    model.graph.input.extend(inputs)


def export_model(weight_paths: Sequence[str | os.PathLike], out_onnx: str | os.PathLike, *,
                 store_paths: Any = None, parity_inputs: Mapping[str, np.ndarray] | None = None,
                 cfg: ExportConfig | Mapping | None = None, parity_out: str | os.PathLike | None = None,
                 name: str | None = None) -> dict[str, Any]:
    """Export one model (the mean of its k fold networks) to ``out_onnx``.

    Parameters
    ----------
    weight_paths : sequence of path
        ``models/final/{model}_fold{k}.pth`` for every fold.
    out_onnx : path
        ``models/onnx/{model}.onnx``; inputs named after the model's ``input_fields``
        (store fields, e.g. ``chains (B, 18, 10000)`` in uV), output ``probs (B, 6)``.
    store_paths : sequence of path or a window source
        Where the parity windows come from (``export.n_parity_windows``, spread over the index).
    parity_inputs : mapping, optional
        ``{field: array (n, ...)}`` instead of ``store_paths``.
    cfg : ExportConfig or mapping
        The ``export`` config section.
    parity_out : path, optional
        JSON report written atomically (also returned).
    name : str, optional
        Model name in the report (default: the file stem).

    Returns
    -------
    dict
        ``model, onnx, n_windows, max_abs_diff`` (probabilities), ``atol, passed, provider,
        opset, n_folds, input_fields, checker``.

    Raises
    ------
    ParityError
        The largest probability difference exceeds ``export.parity_atol`` (nothing written).
    """
    cfg = cfg if isinstance(cfg, ExportConfig) else from_mapping(ExportConfig, cfg, "export")
    out_onnx = Path(out_onnx)
    name = name or out_onnx.stem
    module = load_fold_models(weight_paths)
    fields = list(module.input_fields)
    if parity_inputs is None:
        if store_paths is None:
            raise DataError(out_onnx, "export needs store_paths or parity_inputs for the parity check")
        source = open_window_source(store_paths)
        rows = parity_rows(len(source.index), cfg.n_parity_windows)
        parity_inputs = source.read(rows, fields)
    inputs = [np.asarray(parity_inputs[f], dtype=np.float32) for f in fields]
    example = tuple(torch.from_numpy(x[:cfg.batch_size].copy()) for x in inputs)
    metadata = {"format": EXPORT_FORMAT, "kind": "model", "model": name, "input_fields": fields,
                "n_folds": len(module.folds), "classes": list(CLASSES), "outputs": ["probs"]}
    with atomic.atomic_path(out_onnx) as tmp:
        _write_onnx(module, example, tmp, input_names=fields, output_names=["probs"], opset=cfg.opset,
                    metadata=metadata)
        parity = parity_report(module, tmp, inputs, input_names=fields, output_names=["probs"], cfg=cfg)
        check_parity(parity, out_onnx)
    report = {"model": name, "onnx": str(out_onnx), **parity, "n_folds": len(module.folds),
              "input_fields": fields, "checker": "onnx.checker full_check passed"}
    logger.info("%s: ONNX parity max |diff| %.2e on %d windows (%s)", name, parity["max_abs_diff"],
             parity["n_windows"], parity["provider"])
    if parity_out is not None:
        atomic.write_json(parity_out, report)
    return report


def build_ensemble_graph(member_weights: Mapping[str, Sequence[str | os.PathLike]],
                         ensemble_path: str | os.PathLike, frontend_cfg: Any = None, *,
                         preprocessing: Mapping[str, Any] | None = None) -> EnsembleGraph:
    """The torch ensemble: frontend + every kept member's fold networks + stacker + temperature.

    Parameters
    ----------
    member_weights : mapping
        ``{model name: [weights file of each fold]}``; must hold every member kept in
        ``ensemble.pth`` (others are ignored).
    ensemble_path : path
        ``models/final/ensemble.pth``.
    frontend_cfg : FrontendConfig, mapping or None
        The window preprocessing the members were trained with; None takes it from
        ``preprocessing`` (``PreprocessConfig.frontend``; defaults when that is None too).
    preprocessing : mapping, optional
        The ``preprocessing`` config section.
    """
    from hms_core.ensemble.stacking import load_ensemble
    from hms_core.preprocess import PreprocessConfig
    from hms_core.signal.frontend import FrontendConfig, WindowFrontend

    ens = load_ensemble(ensemble_path)
    missing = [m for m in ens["members"] if m not in member_weights]
    if missing:
        raise DataError(ensemble_path, f"ensemble members {missing} have no weights files "
                                       f"(given: {sorted(member_weights)})")
    if frontend_cfg is None:
        frontend_cfg = from_mapping(PreprocessConfig, preprocessing, "preprocessing").frontend
    elif not isinstance(frontend_cfg, FrontendConfig):
        frontend_cfg = from_mapping(FrontendConfig, frontend_cfg, "preprocessing")
    members = [load_fold_models(member_weights[m]) for m in ens["members"]]
    return EnsembleGraph(WindowFrontend(frontend_cfg), members, ens["head"], ens["bma_weights"]).eval()


def export_ensemble(member_weights: Mapping[str, Sequence[str | os.PathLike]], ensemble_path: str | os.PathLike,
                    frontend_cfg: Any, out_onnx: str | os.PathLike, *,
                    preprocessing: Mapping[str, Any] | None = None,
                    raw_windows: np.ndarray | None = None, spec_windows: np.ndarray | None = None,
                    data_dir: str | os.PathLike | None = None, store_paths: Any = None,
                    cfg: ExportConfig | Mapping | None = None,
                    parity_out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Export the whole ensemble, preprocessing included, to one ONNX graph.

    Inputs ``raw_uv (B, 20, 10000)`` float32 uV in Kaggle column order (after
    :func:`hms_core.signal.ica.clean_recording`) and ``spec_power (B, 300, 400)`` (the Kaggle
    spectrogram window); outputs ``probs (B, 6)`` (calibrated, CLASSES order), ``entropy (B,)``
    and ``member_spread (B,)``. ``metadata_props`` carry the preprocessing config as JSON
    (``hms.preprocessing``) and the conformal threshold (``hms.conformal``, when
    ``ensemble.pth`` has one), so ``hms predict`` needs only the .onnx file.

    Parameters
    ----------
    member_weights : mapping
        ``{model name: [weights file of each fold]}``.
    ensemble_path : path
        ``models/final/ensemble.pth``.
    frontend_cfg : FrontendConfig, mapping or None
        Window preprocessing; None (the usual) derives it from ``preprocessing``.
    out_onnx : path
        ``models/onnx/ensemble.onnx``.
    preprocessing : mapping, optional
        The whole ``preprocessing`` config section (:class:`~hms_core.preprocess.PreprocessConfig`);
        stored in full, defaults filled, in the metadata: ``clean_recording`` needs its NaN
        and ICA settings at prediction time.
    raw_windows, spec_windows : np.ndarray, optional
        Parity windows ``(n, 20, 10000)`` and ``(n, 300, 400)``; otherwise they are read from
        ``data_dir`` (the Kaggle layout) at windows spread over ``store_paths``' index
        (over train.csv when None), cleaned as preprocessing cleans them.
    cfg : ExportConfig or mapping
        The ``export`` section.
    parity_out : path, optional
        JSON report written atomically.

    Returns
    -------
    dict
        As :func:`export_model`, ``model`` = "ensemble", plus ``members``.

    Raises
    ------
    ParityError
        ONNX Runtime and PyTorch differ by more than ``export.parity_atol`` (nothing written).
    """
    cfg = cfg if isinstance(cfg, ExportConfig) else from_mapping(ExportConfig, cfg, "export")
    out_onnx = Path(out_onnx)
    graph = build_ensemble_graph(member_weights, ensemble_path, frontend_cfg, preprocessing=preprocessing)
    if raw_windows is None or spec_windows is None:
        if data_dir is None:
            raise DataError(out_onnx, "ensemble export needs raw_windows/spec_windows or data_dir "
                                      "for the parity check")
        raw_windows, spec_windows = train_windows(data_dir, store_paths, n=cfg.n_parity_windows,
                                                  preprocessing=preprocessing)
    state = torch.load(ensemble_path, map_location="cpu", weights_only=True)
    return export_ensemble_graph(graph, out_onnx, members=list(state["members"]), raw_windows=raw_windows,
                                 spec_windows=spec_windows, preprocessing=preprocessing, cfg=cfg,
                                 parity_out=parity_out, conformal=state.get("conformal"))


def export_ensemble_graph(graph: EnsembleGraph, out_onnx: str | os.PathLike, *, members: Sequence[str],
                          raw_windows: np.ndarray, spec_windows: np.ndarray,
                          preprocessing: Mapping[str, Any] | None = None,
                          cfg: ExportConfig | Mapping | None = None,
                          parity_out: str | os.PathLike | None = None,
                          conformal: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Export an :class:`EnsembleGraph` (checker, metadata, parity on the given windows).

    The core of :func:`export_ensemble`, also used by ``bench/predict.py``; see there for the
    inputs, outputs and the metadata written. ``conformal`` (``method``, ``alpha``,
    ``threshold``, ``n_calibration`` from ``ensemble.pth``) is written as ``hms.conformal``
    when given (:func:`hms_core.ensemble.conformal.prediction_sets` takes its threshold).
    """
    from hms_core.preprocess import PreprocessConfig

    cfg = cfg if isinstance(cfg, ExportConfig) else from_mapping(ExportConfig, cfg, "export")
    out_onnx = Path(out_onnx)
    inputs = [np.asarray(raw_windows, dtype=np.float32), np.asarray(spec_windows, dtype=np.float32)]
    example = tuple(torch.from_numpy(x[:cfg.batch_size].copy()) for x in inputs)
    members = list(members)
    metadata = {
        "format": EXPORT_FORMAT, "kind": "ensemble", "members": members,
        "n_folds": {m: len(g.folds) for m, g in zip(members, graph.members)},
        "classes": list(CLASSES), "inputs": list(ENSEMBLE_INPUTS), "outputs": list(ENSEMBLE_OUTPUTS),
        "raw_channels": list(RAW_CHANNELS), "spec_columns_first_last": [SPEC_COLUMNS[0], SPEC_COLUMNS[-1]],
        "temperature": float(graph.head.temperature),
        "preprocessing": from_mapping(PreprocessConfig, preprocessing, "preprocessing").to_dict(),
    }
    if conformal is not None:
        metadata["conformal"] = dict(conformal)
    with atomic.atomic_path(out_onnx) as tmp:
        _write_onnx(graph, example, tmp, input_names=ENSEMBLE_INPUTS, output_names=ENSEMBLE_OUTPUTS,
                    opset=cfg.opset, metadata=metadata)
        parity = parity_report(graph, tmp, inputs, input_names=ENSEMBLE_INPUTS, output_names=ENSEMBLE_OUTPUTS,
                               cfg=cfg)
        check_parity(parity, out_onnx)
    report = {"model": "ensemble", "onnx": str(out_onnx), **parity, "members": members,
              "checker": "onnx.checker full_check passed"}
    logger.info("ensemble: ONNX parity max |diff| %.2e on %d windows (%s)", parity["max_abs_diff"],
             parity["n_windows"], parity["provider"])
    if parity_out is not None:
        atomic.write_json(parity_out, report)
    return report
