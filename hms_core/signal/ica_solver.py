"""MNE's ``ICA.fit`` with picard, reproduced as plain numpy on an array.

The rules labeler only needs the fitted matrices, so :func:`fit_picard` computes them
without ``mne.preprocessing.ICA``: no Raw or Info to build, no dependency version check, no
explained variance over a Raw copy. The arithmetic is MNE's (1.13), step by step:

1. the data in volts, pre-whitened by the standard deviation of all channels together (one
   channel type, EEG);
2. PCA of the centred data by SVD, signs flipped as ``svd_flip`` does, whitened to unit
   variance;
3. picard (``whiten=False``) on the first ``n_components`` principal components, seeded
   with ``numpy.random.RandomState(random_state)``; for Picard-O with the tanh density (the
   rules labeler's ``ortho=True, extended=False``) its iterations as :func:`_picard_ortho`,
   the same iterates computed with fewer numpy calls;
4. the unmixing matrix divided by the square roots of the PCA variances, the mixing matrix
   its pseudo-inverse;
5. the components sorted by the variance they explain in the fitted data, largest first.

tests/signal/test_ica_solver.py checks the result against ``mne.preprocessing.ICA``.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


def _picard_ortho(x: np.ndarray, *, max_iter: int, tol: float, random_state: int, m: int = 7,
                  lambda_min: float = 0.01, ls_tries: int = 10) -> tuple[np.ndarray, int, bool]:
    """``picard.picard(x, whiten=False, ortho=True, extended=False)`` (tanh density), bit for bit.

    picard 0.8's ``picard`` and ``core_picard`` restricted to that model (Picard-O,
    Ablin, Cardoso and Gramfort 2018, BSD-3): the same iterates, L-BFGS memory, line search
    and stopping rule. What differs is bookkeeping: the loss is evaluated on the whole
    source block into reused buffers instead of one channel at a time (picard's loop has
    about 6 numpy calls per channel per evaluation, its cost on 19 x 4000 samples), and the
    squared sources picard computes for its non-orthogonal model are not.

    Returns ``(unmixing (n, n), n_iter, converged)`` as picard's ``W``, ``n_iter`` and
    its convergence flag.
    """
    from scipy.linalg import expm

    y = np.array(x, dtype=np.float64, copy=True)
    y -= y.mean(axis=-1)[:, None]
    n, t = y.shape
    w_init = _sym_decorrelation(np.asarray(np.random.RandomState(random_state).normal(size=(n, n)), dtype=y.dtype))
    y = np.dot(w_init, y)
    spare = np.empty_like(y)  # the line search's trial sources; swapped with y when taken
    work = np.empty_like(y)
    score = np.empty_like(y)
    der = np.empty_like(y)

    def loss(sources: np.ndarray) -> float:
        # picard's Tanh log-likelihood |y| + log1p(exp(-2|y|)), mean per channel, summed in channel order
        a = np.abs(sources, out=der)  # der is free during the line search
        np.multiply(a, -2.0, out=work)
        np.exp(work, out=work)
        np.log1p(work, out=work)
        np.add(work, a, out=work)
        total = 0.0
        for value in work.mean(axis=1):
            total += value
        return total

    def line_search(w, direction, current, tries):
        alpha = 1.0
        for _ in range(tries):
            with np.errstate(over="ignore", invalid="ignore"):
                transform = expm(alpha * direction)
                np.dot(transform, y, out=spare)
                w_new = np.dot(transform, w)
                new_loss = loss(spare)
            if np.isfinite(new_loss) and new_loss < current:
                return True, w_new, new_loss, alpha * direction
            alpha /= 2.0
        return False, w_new, new_loss, alpha * direction

    w = np.eye(n)
    s_list: list = []
    y_list: list = []
    r_list: list = []
    current_loss = loss(y)
    converged = False
    direction = g_old = None  # set on the first pass, read from the second
    for it in range(max_iter):
        np.tanh(y, out=score)
        np.square(score, out=der)
        np.subtract(1.0, der, out=der)
        g = np.inner(score, y) / t
        h_off = np.diag(g).copy()
        psid_mean = np.mean(der, axis=1)
        h = 0.5 * (psid_mean[:, None] + psid_mean[None, :] - h_off[:, None] - h_off[None, :])
        h[h < lambda_min] = lambda_min
        g = (g - g.T) / 2
        if np.max(np.abs(g)) < tol:
            converged = True
            break
        if it > 0:
            s_list.append(direction)
            y_list.append(g - g_old)
            r_list.append(1.0 / np.sum(direction * y_list[-1]))
            if len(s_list) > m:
                s_list.pop(0)
                y_list.pop(0)
                r_list.pop(0)
        g_old = g
        direction = _l_bfgs_direction(g, h, s_list, y_list, r_list)
        ok, new_w, new_loss, direction = line_search(w, direction, current_loss, ls_tries)
        if not ok:
            direction = -g
            s_list, y_list, r_list = [], [], []
            _, new_w, new_loss, direction = line_search(w, direction, current_loss, 10)
        y, spare = spare, y
        w = new_w
        current_loss = new_loss
    return np.dot(w, w_init), it, converged


def _sym_decorrelation(w: np.ndarray) -> np.ndarray:
    """picard's ``_sym_decorrelation``: ``(W W^T)^(-1/2) W`` (here to spare the rules path
    ``import picard``, which imports scikit-learn: about a second per process)."""
    s, u = np.linalg.eigh(np.dot(w, w.T))
    return np.dot(np.dot(u * (1.0 / np.sqrt(s)), u.T), w)


def _l_bfgs_direction(g, h, s_list, y_list, r_list) -> np.ndarray:
    """picard's ``_l_bfgs_direction`` with ``ortho=True``."""
    q = g.copy()
    a_list = []
    for s, y, r in zip(reversed(s_list), reversed(y_list), reversed(r_list)):
        alpha = r * np.sum(s * q)
        a_list.append(alpha)
        q -= alpha * y
    z = q / h
    z = (z - z.T) / 2.0
    for s, y, r, alpha in zip(s_list, y_list, r_list, reversed(a_list)):
        beta = r * np.sum(y * z)
        z += (alpha - beta) * s
    return -z


@dataclass
class IcaSolution:
    """A fitted ICA, with the attribute names (and units) of ``mne.preprocessing.ICA``.

    Matrices act on pre-whitened volts: ``sources = unmixing_matrix_ @ pca_components_[:n]
    @ (x_volts / pre_whitener_ - pca_mean_)``.
    """

    n_components_: int
    pre_whitener_: np.ndarray  # (k, 1) V
    pca_mean_: np.ndarray  # (k,) pre-whitened units
    pca_components_: np.ndarray  # (k, k)
    pca_explained_variance_: np.ndarray  # (k,)
    unmixing_matrix_: np.ndarray  # (n, n)
    mixing_matrix_: np.ndarray  # (n, n)
    n_iter_: int

    def get_components(self) -> np.ndarray:
        """``(k, n_components)`` channel maps, as ``ICA.get_components``."""
        n = self.n_components_
        return np.dot(self.mixing_matrix_[:, :n].T, self.pca_components_[:n]).T


def fit_picard(data_uv: np.ndarray, n_components: int, *, fit_params: dict, max_iter: int,
               random_state: int) -> IcaSolution:
    """MNE's ``ICA(n_components, method="picard", fit_params, max_iter, random_state).fit``
    on a RawArray of ``data_uv (k, n_samples)`` (uV, all channels EEG).

    Raises
    ------
    ValueError
        Non-finite data, or more components than channels.
    numpy.linalg.LinAlgError
        The SVD fails with both LAPACK drivers.
    """
    from mne.utils.linalg import pinv
    from scipy import linalg

    data = np.array(data_uv, dtype=np.float64, order="C") * 1e-6  # RawArray holds volts
    if not np.isfinite(data).all():
        raise ValueError("Input data contains non-finite values (NaN/Inf). ")
    n_channels, n_samples = data.shape
    if not 1 < n_components <= n_channels:
        raise ValueError(f"n_components {n_components} must lie in [2, {n_channels}]")
    pre_whitener = np.full((n_channels, 1), np.std(data))
    data /= pre_whitener

    x = data.T.copy()
    mean = np.mean(x, axis=0)
    x -= mean
    try:
        u, s, v = linalg.svd(x, full_matrices=False)
    except np.linalg.LinAlgError:
        u, s, v = linalg.svd(x, full_matrices=False, lapack_driver="gesvd")
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])  # svd_flip
    u *= signs
    v *= signs[:, None]
    explained_variance = s ** 2 / (n_samples - 1)
    u *= np.sqrt(n_samples - 1)  # whitened principal components

    components = u[:, :n_components].T
    params = {"max_iter": max_iter, **fit_params}
    if params.keys() <= {"max_iter", "tol", "ortho", "extended"} and params.get("ortho", True) \
            and params.get("extended") is False:
        unmixing, n_iter, converged = _picard_ortho(components, max_iter=params["max_iter"],
                                                    tol=params.get("tol", 1e-7), random_state=random_state)
        if not converged:
            logger.debug("ICA: picard did not converge in %d iterations", max_iter)
    else:
        from picard import picard

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, unmixing, _, n_iter = picard(components, whiten=False, return_n_iter=True,
                                            random_state=np.random.RandomState(random_state), **params)
        for w in caught:
            logger.debug("ICA: %s", w.message)
    norms = explained_variance[:n_components]
    if not norms[-1] / explained_variance[0] > 1e-6:
        logger.debug("ICA: n_components %d gives an unstable mixing matrix (variance ratio %.2g)",
                     n_components, norms[-1] / explained_variance[0])
    norms = np.sqrt(norms)
    norms[norms == 0] = 1.0
    unmixing /= norms
    mixing = pinv(unmixing)

    # MNE sorts by the variance each component explains in the data it was fitted on
    sources = (unmixing @ v[:n_components]) @ (data - mean[:, None])
    var = np.sum(mixing ** 2, axis=0) * np.sum(sources ** 2, axis=1) / (n_components * n_samples - 1)
    order = var.argsort()[::-1]
    return IcaSolution(n_components_=n_components, pre_whitener_=pre_whitener, pca_mean_=mean,
                       pca_components_=v, pca_explained_variance_=explained_variance,
                       unmixing_matrix_=unmixing[order], mixing_matrix_=mixing[:, order], n_iter_=n_iter + 1)
