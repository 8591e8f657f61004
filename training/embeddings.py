"""Implicit-feedback ALS (Hu, Koren & Volinsky 2008) in numpy, plus k-means.

Deterministic: fixed-seed initialisation, a fixed visiting order and one BLAS thread
(train.py pins the thread count before numpy is imported).
"""
from __future__ import annotations

import numpy as np

# event weights when building the implicit matrix: view, click, purchase
EVENT_WEIGHT = np.array([1.0, 4.0, 8.0])


def _csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int):
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, cols, vals


def _half_step(Y: np.ndarray, indptr, cols, conf, reg: float) -> np.ndarray:
    k = Y.shape[1]
    YtY = Y.T @ Y + reg * np.eye(k)
    X = np.zeros((len(indptr) - 1, k))
    for r in range(len(indptr) - 1):
        s, e = indptr[r], indptr[r + 1]
        if s == e:
            continue
        Yi = Y[cols[s:e]]
        c = conf[s:e]
        A = YtY + (Yi.T * (c - 1.0)) @ Yi
        X[r] = np.linalg.solve(A, Yi.T @ c)
    return X


def implicit_als(n_users, n_items, u, i, ev, *, dim=32, iters=12, reg=0.1, alpha=6.0, seed=7, decay=None):
    """Returns raw (unnormalised) user and item factors, float64. decay: optional
    per-event multiplier of the event weights (recency)."""
    key = u.astype(np.int64) * n_items + i
    uniq, inv = np.unique(key, return_inverse=True)
    w = np.bincount(inv, weights=EVENT_WEIGHT[ev] * (1.0 if decay is None else decay))
    uu = (uniq // n_items).astype(np.int64)
    ii = (uniq % n_items).astype(np.int64)
    conf = 1.0 + alpha * np.log1p(w)
    u_ptr, u_cols, u_conf = _csr(uu, ii, conf, n_users)
    i_ptr, i_cols, i_conf = _csr(ii, uu, conf, n_items)
    rng = np.random.default_rng(seed)
    U = rng.normal(0.0, 0.1, size=(n_users, dim))
    V = rng.normal(0.0, 0.1, size=(n_items, dim))
    for _ in range(iters):
        U = _half_step(V, u_ptr, u_cols, u_conf, reg)
        V = _half_step(U, i_ptr, i_cols, i_conf, reg)
    return U, V


def l2_normalize(m: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(m, axis=1, keepdims=True)
    return np.where(n > 1e-12, m / np.maximum(n, 1e-12), 0.0)


def fill_cold(U, V, user_seen, item_seen, item_category, n_categories):
    """Cold entities (no events in the window) get a fallback direction:
    items the mean of their category's warm items, users the mean of all warm users.
    Inputs and outputs are L2-normalised."""
    U = U.copy()
    V = V.copy()
    if user_seen.any():
        U[~user_seen] = U[user_seen].mean(axis=0)
    global_item = V[item_seen].mean(axis=0) if item_seen.any() else np.zeros(V.shape[1])
    V[(~item_seen) & (item_category < 0)] = global_item  # category not known yet
    for c in range(n_categories):
        cold = (~item_seen) & (item_category == c)
        if not cold.any():
            continue
        warm = item_seen & (item_category == c)
        V[cold] = V[warm].mean(axis=0) if warm.any() else global_item
    return l2_normalize(U), l2_normalize(V)


def kmeans(X: np.ndarray, k: int, seed: int, iters: int = 50) -> np.ndarray:
    """Plain Lloyd with k-means++ seeding; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    n = len(X)
    k = min(k, n)
    centers = [X[rng.integers(n)]]
    d2 = ((X - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centers.append(X[rng.choice(n, p=p)])
        d2 = np.minimum(d2, ((X - centers[-1]) ** 2).sum(1))
    C = np.array(centers)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iters):
        dist = (X ** 2).sum(1)[:, None] - 2 * X @ C.T + (C ** 2).sum(1)[None, :]
        new = dist.argmin(1)
        if _ and (new == labels).all():
            break
        labels = new
        for c in range(k):
            m = labels == c
            if m.any():
                C[c] = X[m].mean(0)
    return labels


# ----------------------------------------------------------------------------
# hyperparameter search
# ----------------------------------------------------------------------------

ALS_DIM = 31  # served vectors: 31 factor slots + the MIPS->cosine component
ALS_GRID = {
    "factors": (16, 31),
    "reg": (3.0, 30.0, 100.0),
    "alpha": (2.0, 6.0, 20.0),
    "iters": (6, 12),
    "half_life_share": (None, 0.25),  # recency weighting: half-life as a share of the history span
}
ALS_FIRST = {"factors": 31, "reg": 30.0, "alpha": 6.0, "iters": 12, "half_life_share": None}
ALS_TRIALS = 6  # the budget: a fixed number of fits, not a wall-clock limit


def als_trials(seed: int) -> list[dict]:
    """ALS_FIRST, then distinct configurations drawn from the grid (seeded)."""
    import itertools

    keys = list(ALS_GRID)
    grid = [dict(zip(keys, combo)) for combo in itertools.product(*ALS_GRID.values())]
    rest = [g for g in grid if g != ALS_FIRST]
    pick = np.random.default_rng(seed + 505).choice(len(rest), size=min(ALS_TRIALS - 1, len(rest)), replace=False)
    return [ALS_FIRST] + [rest[k] for k in sorted(pick)]


def train_als(n_users, n_items, u, i, ev, ts, hi: int, cfg: dict, half_life_s: float | None, seed: int):
    """ALS on the events before hi; factors zero-padded to ALS_DIM (same inner products)."""
    decay = None if half_life_s is None else 0.5 ** ((hi - ts).astype(np.float64) / half_life_s)
    U, V = implicit_als(n_users, n_items, u, i, ev, dim=cfg["factors"], iters=cfg["iters"], reg=cfg["reg"], alpha=cfg["alpha"], seed=seed, decay=decay)
    pad = lambda M: np.pad(M, ((0, 0), (0, ALS_DIM - M.shape[1])))
    return pad(U), pad(V)
