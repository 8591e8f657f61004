"""Ranker training with a small seeded hyperparameter search.

The ranker's rows (the tuning window's impressions) are split by user: 75% of the
users fit each candidate configuration, the other 25% score it by NDCG@10 (the
metric that is reported); the winner is refitted on every row. The budget is a fixed
list of configurations, not a wall-clock limit, so the choice never depends on the
machine's speed.
"""
from __future__ import annotations

import numpy as np

from evaluation import ndcg_per_list

GBDT_BASE = dict(
    objective="binary",
    learning_rate=0.05,
    subsample=0.8,
    subsample_freq=1,
    colsample_bytree=0.9,
    reg_lambda=1.0,
    num_threads=1,
    deterministic=True,
    force_row_wise=True,
    verbose=-1,
)
# size x regularisation x row weighting (per_user: every user's rows weigh 1 in
# total, so a few heavy users do not decide the model)
GBDT_GRID = [
    dict(num_leaves=15, min_child_samples=100, weighting="none"),
    dict(num_leaves=31, min_child_samples=40, weighting="none"),
    dict(num_leaves=15, min_child_samples=100, weighting="per_user"),
    dict(num_leaves=63, min_child_samples=20, weighting="per_user"),
]
GBDT_ROUNDS = (50, 100, 200, 300)  # trees; each configuration is scored at these counts

MLP_BASE = dict(activation="relu", solver="adam", batch_size=256, learning_rate_init=1e-3, tol=0.0, n_iter_no_change=10_000)
MLP_GRID = [
    dict(hidden_layer_sizes=(32,), alpha=1e-3),
    dict(hidden_layer_sizes=(64, 32), alpha=1e-3),
    dict(hidden_layer_sizes=(128, 64), alpha=1e-2),
]
MLP_EPOCHS = (4, 8, 16)  # each configuration is scored after these epochs
TUNE_SHARE = 0.25


def _row_weights(u: np.ndarray, weighting: str) -> np.ndarray:
    if weighting == "none":
        return np.ones(len(u))
    counts = np.bincount(u)
    w = 1.0 / counts[u]
    return w * (len(u) / w.sum())


def tune_users(u: np.ndarray, seed: int) -> np.ndarray:
    """Boolean mask of the rows whose user is in the tuning share (seeded)."""
    users = np.unique(u)
    picked = np.random.default_rng(seed + 303).random(len(users)) < TUNE_SHARE
    return np.isin(u, users[picked])


def _ndcg(u, y, s) -> float:
    v = ndcg_per_list(u, y, s)
    return float(v.mean()) if len(v) else 0.0


def _fit_gbdt(X, y, w, cfg, rounds, seed):
    import lightgbm as lgb

    params = {**GBDT_BASE, **{k: v for k, v in cfg.items() if k != "weighting"}}
    clf = lgb.LGBMClassifier(random_state=seed, n_estimators=rounds, **params)
    clf.fit(X, y, sample_weight=w)
    return clf


def train_gbdt(X, y, u, seed):
    """Returns (model refitted on all rows, chosen params, search log)."""
    tune = tune_users(u, seed)
    trials = []
    for cfg in GBDT_GRID:
        clf = _fit_gbdt(X[~tune], y[~tune], _row_weights(u[~tune], cfg["weighting"]), cfg, max(GBDT_ROUNDS), seed)
        for r in GBDT_ROUNDS:
            s = clf.predict_proba(X[tune], num_iteration=r)[:, 1]
            trials.append({**cfg, "n_estimators": r, "tune_ndcg@10": round(_ndcg(u[tune], y[tune], s), 6)})
    best = max(trials, key=lambda t: t["tune_ndcg@10"])  # first of equals: smaller, earlier
    cfg = {k: best[k] for k in ("num_leaves", "min_child_samples", "weighting")}
    clf = _fit_gbdt(X, y, _row_weights(u, cfg["weighting"]), cfg, best["n_estimators"], seed)
    return clf, {**GBDT_BASE, **cfg, "n_estimators": best["n_estimators"]}, trials


def _standardize(X):
    mean = X.astype(np.float64).mean(0)
    std = X.astype(np.float64).std(0)
    return mean, np.where(std > 1e-6, std, 1.0)


def _fit_mlp_epochs(Z, y, cfg, epochs, seed, on_epoch=None):
    """Adam for a fixed number of epochs (one partial_fit pass each, shuffled with
    the seeded state), calling on_epoch(e, clf) after each."""
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(random_state=seed, shuffle=True, **MLP_BASE, **cfg)
    for e in range(1, epochs + 1):
        clf.partial_fit(Z, y, classes=np.array([0, 1]))
        if on_epoch:
            on_epoch(e, clf)
    return clf


def train_mlp(X, y, u, seed):
    """Returns (model refitted on all rows, mean, std, chosen params, search log)."""
    tune = tune_users(u, seed)
    trials = []
    for cfg in MLP_GRID:
        mean, std = _standardize(X[~tune])
        Zf = ((X[~tune] - mean) / std).astype(np.float32)
        Zt = ((X[tune] - mean) / std).astype(np.float32)

        def score(e, clf, cfg=cfg, Zt=Zt):
            if e in MLP_EPOCHS:
                s = clf.predict_proba(Zt)[:, 1]
                trials.append({"hidden_layer_sizes": list(cfg["hidden_layer_sizes"]), "alpha": cfg["alpha"], "epochs": e, "tune_ndcg@10": round(_ndcg(u[tune], y[tune], s), 6)})

        _fit_mlp_epochs(Zf, y[~tune], cfg, max(MLP_EPOCHS), seed, score)
    best = max(trials, key=lambda t: t["tune_ndcg@10"])
    cfg = {"hidden_layer_sizes": tuple(best["hidden_layer_sizes"]), "alpha": best["alpha"]}
    mean, std = _standardize(X)
    clf = _fit_mlp_epochs(((X - mean) / std).astype(np.float32), y, cfg, best["epochs"], seed)
    params = {**MLP_BASE, "hidden_layer_sizes": list(cfg["hidden_layer_sizes"]), "alpha": cfg["alpha"], "epochs": best["epochs"]}
    return clf, mean, std, params, trials
