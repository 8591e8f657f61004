"""What the serving side monitors a model against: the distribution of every input
feature in the rows the ranker was trained on (for drift), and a held-out slice of
the log to replay as live traffic (for online accuracy). See training/README.md,
"Monitoring references".
"""
from __future__ import annotations

import numpy as np

from dataset import CLICK, Events
from features import LABEL_WINDOW_S, Impressions, _K

REFERENCE_QUANTILES = np.arange(1, 10) / 10  # decile edges: at most 10 bins per feature
REPLAY_USERS = 100


def feature_reference(X: np.ndarray, names: list[str], rows_description: str) -> dict:
    """Per feature: bin edges at the deciles of its finite values (values that occur
    in the rows, deduplicated, so a binary feature gets one edge and two bins), the
    share of finite values in each bin, and the share of non-finite (missing) values.
    Bin k holds edges[k-1] <= x < edges[k]: bin 0 is everything below the first edge,
    the last bin everything from the last edge up. Values are float32, as the model
    sees them; an edge is written as the float32 value itself, so the serving side
    (Float32Array rows) bins exactly as this does."""
    X = np.asarray(X, dtype=np.float32)
    features = []
    for j, name in enumerate(names):
        column = X[:, j]
        finite = column[np.isfinite(column)]
        edges = np.unique(np.quantile(finite, REFERENCE_QUANTILES, method="inverted_cdf")) if len(finite) else np.array([], dtype=np.float32)
        counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=len(edges) + 1)
        features.append({
            "name": name,
            "edges": [float(e) for e in edges],
            "proportions": [round(float(c) / max(len(finite), 1), 6) for c in counts],
            "missing_rate": round(1.0 - len(finite) / max(len(column), 1), 6),
        })
    return {
        "kind": "feature-reference",
        "statistic": "PSI over these bins plus a missing bin (services/prediction/drift.ts)",
        "rows": int(len(X)),
        "rows_description": rows_description,
        "bins": "k holds edges[k-1] <= x < edges[k]; bin 0 is x < edges[0], the last bin x >= edges[-1]",
        "features": features,
    }


def first_outcome_times(ev: Events, imp: Impressions) -> np.ndarray:
    """Per impression, the time of the same user's first click or purchase of the same
    item in [view, view + 30 min] (what made its label 1), or -1."""
    pair = ev.u.astype(np.int64) * ev.n_items + ev.i
    pos = ev.ev >= CLICK
    keys = np.sort(pair[pos] * _K + ev.ts[pos])
    k = (imp.u.astype(np.int64) * ev.n_items + imp.i) * _K + imp.ts
    j = np.searchsorted(keys, k, side="left")
    hit = (j < len(keys)) & (keys[np.minimum(j, len(keys) - 1)] <= k + LABEL_WINDOW_S)
    return np.where(hit, imp.ts + (keys[np.minimum(j, len(keys) - 1)] - k), -1)


def replay_slice(ev: Events, imp: Impressions, X: np.ndarray, seed: int) -> tuple[list[dict], np.ndarray]:
    """Every validation impression of REPLAY_USERS users drawn among those whose list
    counts for NDCG (a click and a non-click), in time order: user, item, view time,
    label and the time of the click or purchase that labelled it (epoch seconds, None
    when unclicked), with its feature row. The held-out log to replay as live traffic."""
    users = np.unique(imp.u)
    clicked = np.bincount(imp.u, weights=imp.label, minlength=ev.n_users)
    shown = np.bincount(imp.u, minlength=ev.n_users)
    eligible = users[(clicked[users] > 0) & (clicked[users] < shown[users])]
    pick = np.sort(np.random.default_rng(seed + 24).choice(eligible, size=min(REPLAY_USERS, len(eligible)), replace=False))
    rows = np.flatnonzero(np.isin(imp.u, pick))
    outcome = first_outcome_times(ev, imp)
    impressions = [
        {
            "user_id": ev.user_ids[imp.u[r]],
            "item_id": ev.item_ids[imp.i[r]],
            "at": int(imp.ts[r]),
            "label": int(imp.label[r]),
            "outcome_at": int(outcome[r]) if outcome[r] >= 0 else None,
        }
        for r in rows
    ]
    return impressions, np.asarray(X[rows], dtype="<f4")
