"""Ranker training and offline metrics."""
from __future__ import annotations

import numpy as np

GBDT_PARAMS = dict(
    objective="binary",
    n_estimators=200,
    learning_rate=0.05,
    num_leaves=31,
    min_child_samples=40,
    subsample=0.8,
    subsample_freq=1,
    colsample_bytree=0.9,
    reg_lambda=1.0,
    num_threads=1,
    deterministic=True,
    force_row_wise=True,
    verbose=-1,
)

MLP_PARAMS = dict(
    hidden_layer_sizes=(256, 128),
    activation="relu",
    alpha=1e-3,
    batch_size=256,
    learning_rate_init=1e-3,
    max_iter=40,
    early_stopping=True,
    validation_fraction=0.1,
    n_iter_no_change=5,
    tol=1e-5,
)


def train_gbdt(X, y, seed):
    import lightgbm as lgb

    clf = lgb.LGBMClassifier(random_state=seed, **GBDT_PARAMS)
    clf.fit(X, y)
    return clf


def train_mlp(X, y, seed):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    mean = X.astype(np.float64).mean(0)
    std = X.astype(np.float64).std(0)
    std = np.where(std > 1e-6, std, 1.0)
    Z = ((X - mean) / std).astype(np.float32)
    clf = MLPClassifier(random_state=seed, **MLP_PARAMS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(Z, y)
    return clf, mean, std


# ----------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------

def auc(y, s) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def logloss(y, p) -> float:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def ndcg_at_k(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 10):
    """Mean NDCG@k over groups (users) that have at least one positive and one
    negative impression. Ties are broken by impression order (stable), so an
    uninformative score gets no lucky ordering."""
    order = np.lexsort((np.arange(len(groups)), -scores.astype(np.float64), groups))
    g, lab = groups[order], labels[order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(g)]
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    vals = []
    for s, e in zip(starts, ends):
        rel = lab[s:e]
        npos = rel.sum()
        if npos == 0 or npos == len(rel):
            continue
        dcg = (rel[:k] * disc[: min(k, len(rel))]).sum()
        idcg = disc[: int(min(k, npos))].sum()
        vals.append(dcg / idcg)
    return float(np.mean(vals)) if vals else 0.0, len(vals)


def recall_at_k(top: np.ndarray, positives: list[np.ndarray]) -> float:
    """top: [n_users_eval, k] item indices; positives: item index arrays per user."""
    r = [np.isin(p, t).sum() / len(p) for t, p in zip(top, positives)]
    return float(np.mean(r)) if r else 0.0
