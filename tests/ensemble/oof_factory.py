"""Synthetic out-of-fold predictions with a known truth.

Each row has a latent class distribution ``q`` (Dirichlet); its votes are a multinomial draw
from ``q``. A member predicts ``softmax(log q + noise)``; members differ in their noise
(independent draws, so their errors are partly independent) and in their calibration
(a temperature on the logits). This is what makes averaging help: the test shows that the
stacker exploits independent errors and corrects miscalibration, not that it would beat a
real model on real data.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from hms_core.contract import CLASSES, LOGP_COLUMNS, LOGP_SWAP_COLUMNS, VOTE_COLUMNS


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def make_truth(n_rows: int, n_folds: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    latent = rng.dirichlet(np.full(len(CLASSES), 0.5), size=n_rows)
    n_votes = np.where(rng.random(n_rows) < 0.5, rng.integers(1, 10, n_rows), rng.integers(10, 21, n_rows))
    votes = np.stack([rng.multinomial(n, p) for n, p in zip(n_votes, latent)])
    fold = rng.permutation(np.arange(n_rows) % n_folds)
    return {"latent": latent, "votes": votes, "fold": fold, "label_id": np.arange(n_rows) + 1000}


def member_logp(truth: dict, *, noise: float, temperature: float, seed: int,
                shared: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Plain and 'hemisphere-swapped' log-probabilities of one simulated member."""
    rng = np.random.default_rng(seed)
    logq = np.log(np.clip(truth["latent"], 1e-4, 1))
    base = logq + noise * rng.standard_normal(logq.shape)
    if shared is not None:
        base = base + shared
    plain = _log_softmax(base / temperature)
    swap = _log_softmax((base + 0.3 * noise * rng.standard_normal(logq.shape)) / temperature)
    return plain, swap


def write_member(tmp_path, name: str, truth: dict, logp: np.ndarray, logp_swap: np.ndarray) -> list:
    paths = []
    for k in np.unique(truth["fold"]):
        rows = truth["fold"] == k
        df = pd.DataFrame({"label_id": truth["label_id"][rows], "fold": truth["fold"][rows]})
        for j, col in enumerate(VOTE_COLUMNS):
            df[col] = truth["votes"][rows, j]
        for j, col in enumerate(LOGP_COLUMNS):
            df[col] = logp[rows, j].astype(np.float32)
        for j, col in enumerate(LOGP_SWAP_COLUMNS):
            df[col] = logp_swap[rows, j].astype(np.float32)
        path = tmp_path / f"{name}_fold{int(k)}.parquet"
        df.to_parquet(path, index=False)
        paths.append(path)
    return paths


def synthetic_oof_members(tmp_path):
    """Four members: two good and independent, one over-confident, one near-copy of the best."""
    truth = make_truth(1500, 4, seed=0)
    rng = np.random.default_rng(1)
    specs = {"alpha": dict(noise=0.9, temperature=1.0, seed=11),
             "beta": dict(noise=1.0, temperature=1.0, seed=12),
             "gamma": dict(noise=1.1, temperature=0.5, seed=13)}
    logps = {name: member_logp(truth, **spec) for name, spec in specs.items()}
    a_plain, a_swap = logps["alpha"]
    jitter = 0.05 * rng.standard_normal(a_plain.shape)
    logps["alpha_copy"] = (_log_softmax(a_plain + jitter), _log_softmax(a_swap + jitter))
    paths = {name: write_member(tmp_path, name, truth, *lp) for name, lp in logps.items()}
    return {"truth": truth, "paths": paths, "logp": logps}
