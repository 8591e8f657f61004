"""Ranker features: exact definitions (see training/README.md), shared by the
training-set builder and the batch-feature export, so what the services read from
the feature store is what the ranker was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Context, Decimal

import numpy as np

from dataset import CLICK, DAY, VIEW, Events

FEATURES = [
    "user_log_events",
    "user_ctr",
    "item_log_popularity",
    "item_ctr",
    "user_category_affinity",
    "embedding_dot",
    "hour_sin",
    "hour_cos",
    "device_mobile",
    "device_desktop",
    "device_tablet",
    "user_clicks_1h",
    "user_recent_category_match",
    "item_trending",
]
N_FEATURES = len(FEATURES)
CTR_PRIOR_CLICKS = 1.0
CTR_PRIOR_VIEWS = 10.0
TRENDING_CAP = 10.0
LABEL_WINDOW_S = 1800  # a view is positive if the user clicks/buys the item within 30 min
_K = np.int64(1) << np.int64(32)  # key = entity * 2^32 + epoch seconds
_LN_CONTEXT = Context(prec=40)


def exact_log1p(counts: np.ndarray) -> np.ndarray:
    """ln(1 + n) of integer counts, correctly rounded to float64 through `decimal`
    (integer arithmetic, the same on every machine). numpy's log1p dispatches to
    CPU-specific SIMD code whose last bit differs between CPUs (AVX-512 vs AVX2),
    and these values are written to the byte-exact feature files."""
    uniq, inv = np.unique(counts, return_inverse=True)
    logs = np.array([float(_LN_CONTEXT.ln(Decimal(int(n) + 1))) for n in uniq])
    return logs[inv].reshape(np.shape(counts))


@dataclass
class BatchStats:
    """Aggregates over a feature window [lo, hi) — what the batch job materialises."""

    lo: int
    hi: int
    days: float
    user_events: np.ndarray
    user_views: np.ndarray
    user_clicks: np.ndarray
    user_cat_clicks: np.ndarray  # [U, C]
    item_events: np.ndarray
    item_views: np.ndarray
    item_clicks: np.ndarray

    @property
    def user_log_events(self):
        return exact_log1p(self.user_events)

    @property
    def user_ctr(self):
        return (self.user_clicks + CTR_PRIOR_CLICKS) / (self.user_views + CTR_PRIOR_VIEWS)

    @property
    def item_log_popularity(self):
        return exact_log1p(self.item_events)

    @property
    def item_ctr(self):
        return (self.item_clicks + CTR_PRIOR_CLICKS) / (self.item_views + CTR_PRIOR_VIEWS)

    @property
    def item_daily_avg(self):
        # +1 smoothing keeps item_trending finite for items unseen in the window
        return (self.item_events + 1.0) / self.days

    @property
    def user_cat_share(self):
        tot = self.user_cat_clicks.sum(axis=1, keepdims=True)
        return np.where(tot > 0, self.user_cat_clicks / np.maximum(tot, 1), 0.0)


def batch_stats(ev: Events, lo: int, hi: int) -> BatchStats:
    m = (ev.ts >= lo) & (ev.ts < hi)
    u, i, e = ev.u[m], ev.i[m], ev.ev[m]
    nu, ni, nc = ev.n_users, ev.n_items, len(ev.categories)
    clicks = e == CLICK
    cat = ev.item_category[i]
    ucc = np.bincount(u[clicks].astype(np.int64) * nc + cat[clicks], minlength=nu * nc).reshape(nu, nc)
    return BatchStats(
        lo=lo,
        hi=hi,
        days=(hi - lo) / DAY,
        user_events=np.bincount(u, minlength=nu).astype(np.float64),
        user_views=np.bincount(u[e == VIEW], minlength=nu).astype(np.float64),
        user_clicks=np.bincount(u[clicks], minlength=nu).astype(np.float64),
        user_cat_clicks=ucc.astype(np.float64),
        item_events=np.bincount(i, minlength=ni).astype(np.float64),
        item_views=np.bincount(i[e == VIEW], minlength=ni).astype(np.float64),
        item_clicks=np.bincount(i[clicks], minlength=ni).astype(np.float64),
    )


@dataclass
class Impressions:
    u: np.ndarray
    i: np.ndarray
    ts: np.ndarray
    dev: np.ndarray
    hour: np.ndarray
    label: np.ndarray  # 0/1


def impressions(ev: Events, lo: int, hi: int) -> Impressions:
    """Views in [lo, hi), labelled 1 if the same user clicks or buys the same item
    within 30 minutes after the view. Clicks with no view before them (possible in a
    user's own file) count as a positive impression at the click time."""
    pair = ev.u.astype(np.int64) * ev.n_items + ev.i
    pos = ev.ev >= CLICK
    pos_keys = np.sort(pair[pos] * _K + ev.ts[pos])
    view_keys = np.sort(pair[ev.ev == VIEW] * _K + ev.ts[ev.ev == VIEW])

    mv = (ev.ev == VIEW) & (ev.ts >= lo) & (ev.ts < hi)
    k = pair[mv] * _K + ev.ts[mv]
    lab = np.searchsorted(pos_keys, k + LABEL_WINDOW_S, side="right") > np.searchsorted(pos_keys, k, side="left")

    mc = (ev.ev == CLICK) & (ev.ts >= lo) & (ev.ts < hi)
    kc = pair[mc] * _K + ev.ts[mc]
    had_view = np.searchsorted(view_keys, kc, side="right") > np.searchsorted(view_keys, kc - LABEL_WINDOW_S, side="left")
    orphan = np.flatnonzero(mc)[~had_view]

    idx = np.concatenate([np.flatnonzero(mv), orphan])
    label = np.concatenate([lab, np.ones(len(orphan), dtype=bool)]).astype(np.int8)
    order = np.lexsort((idx, ev.ts[idx]))
    idx, label = idx[order], label[order]
    return Impressions(u=ev.u[idx], i=ev.i[idx], ts=ev.ts[idx], dev=ev.dev[idx], hour=ev.hour[idx], label=label)


def add_sampled_negatives(imp: Impressions, popularity: np.ndarray, n_items: int, per_pos: int, seed: int) -> Impressions:
    """For logs without negative impressions: for each positive, `per_pos` items
    drawn by popularity, shown in the same context (user, time, device, hour)."""
    rng = np.random.default_rng(seed + 101)
    p = (popularity + 1.0) / (popularity + 1.0).sum()
    pos = np.flatnonzero(imp.label == 1)
    rep = np.repeat(pos, per_pos)
    neg_items = rng.choice(n_items, size=len(rep), p=p).astype(np.int32)
    cat = lambda a, b: np.concatenate([a, b])
    out = Impressions(
        u=cat(imp.u, imp.u[rep]),
        i=cat(imp.i, neg_items),
        ts=cat(imp.ts, imp.ts[rep]),
        dev=cat(imp.dev, imp.dev[rep]),
        hour=cat(imp.hour, imp.hour[rep]),
        label=cat(imp.label, np.zeros(len(rep), dtype=np.int8)),
    )
    order = np.argsort(out.ts, kind="stable")
    return Impressions(**{k: getattr(out, k)[order] for k in ("u", "i", "ts", "dev", "hour", "label")})


class OnlineIndex:
    """Sorted event keys for the point-in-time (real-time) features. Only events
    strictly before the impression's timestamp are visible."""

    def __init__(self, ev: Events):
        self.ev = ev
        c = ev.ev == CLICK
        ck = ev.u[c].astype(np.int64) * _K + ev.ts[c]
        o = np.argsort(ck, kind="stable")
        self.click_keys = ck[o]
        self.click_user = ev.u[c][o]
        self.click_item = ev.i[c][o]
        self.click_ts = ev.ts[c][o]
        ik = ev.i.astype(np.int64) * _K + ev.ts
        self.item_keys = np.sort(ik)

    def user_clicks_between(self, u, lo_ts, hi_ts):
        base = u.astype(np.int64) * _K
        return (np.searchsorted(self.click_keys, base + hi_ts, "left") - np.searchsorted(self.click_keys, base + lo_ts, "left")).astype(np.float64)

    def last_click(self, u, t):
        """(item index, timestamp) of the user's most recent click before t, or (-1, -1)."""
        j = np.searchsorted(self.click_keys, u.astype(np.int64) * _K + t, "left") - 1
        ok = (j >= 0) & (self.click_user[np.maximum(j, 0)] == u)
        item = np.where(ok, self.click_item[np.maximum(j, 0)], -1)
        ts = np.where(ok, self.click_ts[np.maximum(j, 0)], -1)
        return item, ts

    def item_events_between(self, i, lo_ts, hi_ts):
        base = i.astype(np.int64) * _K
        return (np.searchsorted(self.item_keys, base + hi_ts, "left") - np.searchsorted(self.item_keys, base + lo_ts, "left")).astype(np.float64)


def feature_matrix(imp: Impressions, stats: BatchStats, online: OnlineIndex, Un: np.ndarray, Vn: np.ndarray, item_category: np.ndarray) -> np.ndarray:
    """[N, 14] float32 in FEATURES order."""
    u, i, t = imp.u, imp.i, imp.ts
    n = len(u)
    X = np.zeros((n, N_FEATURES), dtype=np.float64)
    X[:, 0] = stats.user_log_events[u]
    X[:, 1] = stats.user_ctr[u]
    X[:, 2] = stats.item_log_popularity[i]
    X[:, 3] = stats.item_ctr[i]
    X[:, 4] = stats.user_cat_share[u, item_category[i]]
    X[:, 5] = (Un[u].astype(np.float64) * Vn[i].astype(np.float64)).sum(1)
    h = imp.hour.astype(np.float64)
    X[:, 6] = np.sin(2 * np.pi * h / 24.0)
    X[:, 7] = np.cos(2 * np.pi * h / 24.0)
    X[:, 8] = imp.dev == 0
    X[:, 9] = imp.dev == 1
    X[:, 10] = imp.dev == 2
    X[:, 11] = online.user_clicks_between(u, t - 3600, t)
    last_item, _ = online.last_click(u, t)
    X[:, 12] = (last_item >= 0) & (item_category[np.maximum(last_item, 0)] == item_category[i])
    ev24 = online.item_events_between(i, t - DAY, t)
    X[:, 13] = np.minimum(TRENDING_CAP, ev24 / stats.item_daily_avg[i])
    return X.astype(np.float32)
