"""The offline protocol: the temporal split, retrieval and ranking metrics per user,
the baselines (popularity, recent popularity, item-kNN) and bootstrap intervals.

Every method, ours and the baselines, is scored by the same functions on the same
users, so the per-user values pair up for the bootstrap of the differences.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from dataset import CLICK, Events

K_RECALL = 100
K_NDCG = 10
BOOTSTRAP_SAMPLES = 1000
SCORE_BLOCK = 512  # users scored at once against the whole catalogue (memory bound)


@dataclass(frozen=True)
class Split:
    """[t0, t_label) history | [t_label, t_split) tuning and ranker labels | [t_split, t_end) validation."""

    t0: int
    t_label: int
    t_split: int
    t_end: int


def temporal_split(ts: np.ndarray, valid_frac: float, tune_frac: float) -> Split:
    """Cut the log at event quantiles, not at fractions of the time span: on a log that
    spans years with a thin start, a time fraction can leave validation almost empty.
    Cuts are rounded down to whole hours; ts must be sorted."""
    n = len(ts)
    t0 = int(ts[0]) // 3600 * 3600
    t_end = -(-(int(ts[-1]) + 1) // 3600) * 3600
    cut = lambda frac: int(ts[min(n - 1, int(n * (1.0 - frac)))]) // 3600 * 3600
    s = Split(t0, cut(valid_frac + tune_frac), cut(valid_frac), t_end)
    if not s.t0 < s.t_label < s.t_split < s.t_end:
        raise SystemExit(f"the log is too short to split into history, tuning and validation by whole hours: {s}")
    return s


# ----------------------------------------------------------------------------
# targets and seen items
# ----------------------------------------------------------------------------

def positives(ev: Events, lo: int, hi: int):
    """Users with a click or purchase in [lo, hi) and at least one event before lo
    (warm users: for a user first seen after lo every method can only serve its
    non-personal fallback), and, per user, their distinct positive items."""
    warm = np.bincount(ev.u[ev.ts < lo], minlength=ev.n_users) > 0
    m = (ev.ts >= lo) & (ev.ts < hi) & (ev.ev >= CLICK) & warm[ev.u]
    pairs = np.unique(ev.u[m].astype(np.int64) * ev.n_items + ev.i[m])
    pu, pi = pairs // ev.n_items, pairs % ev.n_items
    users = np.unique(pu)
    a, b = np.searchsorted(pu, users), np.searchsorted(pu, users, side="right")
    return users.astype(np.int32), [pi[x:y] for x, y in zip(a, b)]


def interacted(ev: Events, hi: int) -> sp.csr_matrix:
    """Binary user x item matrix of every (user, item) with an event before hi."""
    m = ev.ts < hi
    X = sp.csr_matrix((np.ones(int(m.sum())), (ev.u[m], ev.i[m])), shape=(ev.n_users, ev.n_items))
    X.sum_duplicates()
    X.data[:] = 1.0
    return X


def repeat_share(ev: Events, split: Split) -> float:
    """Share of the tuning window's positives on items the user had already interacted
    with before it. Near 0 for a log of ratings (one rating per item), where
    recommending an already rated item can never be a hit."""
    seen = interacted(ev, split.t_label)
    m = (ev.ts >= split.t_label) & (ev.ts < split.t_split) & (ev.ev >= CLICK)
    if not m.any():
        return 0.0
    return float(np.asarray(seen[ev.u[m], ev.i[m]]).ravel().mean())


# ----------------------------------------------------------------------------
# retrieval
# ----------------------------------------------------------------------------

def top_k(score_block, users: np.ndarray, exclude: sp.csr_matrix | None, k: int = K_RECALL) -> np.ndarray:
    """[len(users), k] best items per user, best first (ties: lower item index).
    score_block(users) -> dense [len(users), n_items] float64 scores; items in
    `exclude` (the user's already seen items, when filtering) never count."""
    out = []
    for s in range(0, len(users), SCORE_BLOCK):
        block = users[s:s + SCORE_BLOCK]
        S = np.asarray(score_block(block), dtype=np.float64)
        if exclude is not None:
            E = exclude[block].tocoo()
            S[E.row, E.col] = -np.inf
        part = np.argpartition(-S, min(k, S.shape[1] - 1), axis=1)[:, :k]
        ps = np.take_along_axis(S, part, axis=1)
        order = np.lexsort((part, -ps), axis=1)
        out.append(np.take_along_axis(part, order, axis=1))
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def recall_per_user(top: np.ndarray, targets: list[np.ndarray]) -> np.ndarray:
    return np.array([np.isin(p, t).sum() / len(p) for t, p in zip(top, targets)], dtype=np.float64)


# ----------------------------------------------------------------------------
# ranking
# ----------------------------------------------------------------------------

def judged_lists(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray):
    """Each group's labels in score order, for every group (user) with at least one
    positive and one negative impression, in group order; which groups count depends
    on the labels only, so every method gets the same lists. Ties are broken by
    impression order, so an uninformative score gets no lucky ordering."""
    order = np.lexsort((np.arange(len(groups)), -scores.astype(np.float64), groups))
    g, lab = groups[order], labels[order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(g)]
    for s, e in zip(starts, ends):
        rel = lab[s:e]
        npos = rel.sum()
        if 0 < npos < len(rel):
            yield rel


def ndcg_per_list(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = K_NDCG):
    """NDCG@k (binary gains) per judged list (judged_lists)."""
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    vals = []
    for rel in judged_lists(groups, labels, scores):
        dcg = (rel[:k] * disc[: min(k, len(rel))]).sum()
        vals.append(dcg / disc[: int(min(k, rel.sum()))].sum())
    return np.array(vals, dtype=np.float64)


def ctr_per_list(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = K_NDCG):
    """Share of clicked impressions among the first min(k, length) of each judged list
    (judged_lists): the click-through rate of the first k slots had the model ordered it."""
    return np.array([rel[:k].mean() for rel in judged_lists(groups, labels, scores)], dtype=np.float64)


def auc(y, s) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def logloss(y, p) -> float:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


# ----------------------------------------------------------------------------
# baselines
# ----------------------------------------------------------------------------

def recent_popularity(ev: Events, hi: int, tau_s: float) -> np.ndarray:
    """Time-decayed event count per item at time hi: sum of exp(-(hi - t) / tau)."""
    m = ev.ts < hi
    w = np.exp(-(hi - ev.ts[m]).astype(np.float64) / tau_s)
    return np.bincount(ev.i[m], weights=w, minlength=ev.n_items)


class ItemKNN:
    """Item-based collaborative filtering over every neighbour: score(u, i) =
    sum over the user's items j of co-occurrence(i, j) / (n_i^beta * n_j^(1-beta)),
    beta = 0.5 being cosine similarity. Computed as two sparse products, without
    materialising the item x item matrix. Ties (a user without history) are broken
    by popularity, the usual fallback."""

    def __init__(self, seen: sp.csr_matrix, beta: float):
        n = np.asarray(seen.sum(axis=0)).ravel()
        self.tiebreak = 1e-9 * n / max(n.max(), 1.0)
        inv = lambda p: sp.diags(np.where(n > 0, 1.0 / np.maximum(n, 1.0) ** p, 0.0))
        self.seen = seen
        self.left = (seen @ inv(1.0 - beta)).T.tocsr()  # items x users, scaled by n_j^-(1-beta)
        self.right = (seen @ inv(beta)).tocsr()  # users x items, scaled by n_i^-beta

    def scores(self, users: np.ndarray) -> np.ndarray:
        P = self.seen[users] @ self.left  # [users, users]: co-users weighted
        return np.asarray((P @ self.right).todense()) + self.tiebreak

    def pair_scores(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        out = np.zeros(len(u))
        users, inv = np.unique(u, return_inverse=True)
        for s in range(0, len(users), SCORE_BLOCK):
            S = self.scores(users[s:s + SCORE_BLOCK])
            sel = (inv >= s) & (inv < s + SCORE_BLOCK)
            out[sel] = S[inv[sel] - s, i[sel]]
        return out


# ----------------------------------------------------------------------------
# bootstrap
# ----------------------------------------------------------------------------

def bootstrap(per_unit: dict[str, np.ndarray], compare: dict[str, list[str]], seed: int) -> dict:
    """Mean and 95% percentile interval of each method's metric, and of the paired
    difference method - baseline for every pair in `compare`, resampling users
    (the unit of every metric) with replacement."""
    n = len(next(iter(per_unit.values())))
    idx = np.random.default_rng(seed).integers(0, n, size=(BOOTSTRAP_SAMPLES, n)) if n else np.zeros((0, 0), dtype=np.int64)

    def summary(v: np.ndarray) -> dict:
        if n == 0:
            return {"mean": 0.0, "ci95": [0.0, 0.0]}
        lo, hi = np.percentile(v[idx].mean(axis=1), [2.5, 97.5])
        return {"mean": float(v.mean()), "ci95": [float(lo), float(hi)]}

    out = {name: summary(v) for name, v in per_unit.items()}
    for name, baselines in compare.items():
        out[name]["vs"] = {b: summary(per_unit[name] - per_unit[b]) for b in baselines}
    return out
