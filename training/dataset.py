"""Event log container, the synthetic generator and the CSV loader.

Everything is plain numpy; events are kept sorted by timestamp (stable), so every
later step that walks the log sees the same order on every run.
"""
from __future__ import annotations

import csv
import hashlib
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

EVENT_NAMES = ("view", "click", "purchase")
VIEW, CLICK, PURCHASE = 0, 1, 2
DEVICES = ("mobile", "desktop", "tablet")
N_CATEGORIES = 20
DAY = 86400
# The generated log starts here (fixed, so runs are reproducible).
GENERATOR_START = int(datetime(2025, 3, 1, tzinfo=timezone.utc).timestamp())
# Generator parameter sets. "real-log" imitates public rating logs: years of data,
# users who arrive over time and stay a while, a few of them very heavy, an old
# catalogue that keeps most of the popularity while new items trickle in, and no
# item seen twice by the same user.
REGIMES = {
    "default": {"days": 30},
    "real-log": {
        "days": 3650,
        "activity_sigma": 1.6,
        "user_lifetime_share": 0.25,
        "new_item_share": 0.4,
        "new_item_popularity": 0.3,
        "novelty_days": 60.0,
        "revisits": False,
    },
}


def iso(ts: int | float) -> str:
    return datetime.fromtimestamp(int(ts), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def id_width(n: int) -> int:
    return max(6, len(str(max(n - 1, 0))))


@dataclass
class Events:
    user_ids: list[str]
    item_ids: list[str]
    categories: list[str]
    item_category: np.ndarray  # int32 per item, -1 = unknown (filled later)
    item_created: np.ndarray  # int64 epoch seconds per item
    u: np.ndarray  # int32
    i: np.ndarray  # int32
    ts: np.ndarray  # int64 epoch seconds
    ev: np.ndarray  # int8: 0 view, 1 click, 2 purchase
    dev: np.ndarray  # int8: 0 mobile, 1 desktop, 2 tablet, -1 unknown
    hour: np.ndarray  # int8 0..23
    source: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def sort(self) -> None:
        order = np.argsort(self.ts, kind="stable")
        for name in ("u", "i", "ts", "ev", "dev", "hour"):
            setattr(self, name, getattr(self, name)[order])

    def digest(self) -> str:
        """sha256 of the log as training sees it (ids, catalogue, events), so two
        runs can show they trained on the same data."""
        h = hashlib.sha256()
        for names in (self.user_ids, self.item_ids, self.categories):
            h.update("\n".join(names).encode() + b"\0")
        for a, dt in ((self.item_category, "<i4"), (self.item_created, "<i8"), (self.u, "<i4"), (self.i, "<i4"),
                      (self.ts, "<i8"), (self.ev, "i1"), (self.dev, "i1"), (self.hour, "i1")):
            h.update(np.ascontiguousarray(a, dtype=dt).tobytes())
        return h.hexdigest()

    def counts_by_type(self) -> dict:
        c = np.bincount(self.ev, minlength=3)
        return {EVENT_NAMES[k]: int(c[k]) for k in range(3)}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _normalize(m):
    n = np.linalg.norm(m, axis=-1, keepdims=True)
    return m / np.maximum(n, 1e-12)


def generate(
    seed: int,
    n_users: int,
    n_items: int,
    n_events: int,
    days: int = 30,
    *,
    activity_sigma: float = 0.9,
    user_lifetime_share: float | None = None,
    new_item_share: float = 0.15,
    new_item_popularity: float = 1.0,
    novelty_days: float = 2.0,
    revisits: bool = True,
) -> Events:
    """Synthetic interaction log with real structure.

    * users have latent taste vectors (mixtures of 1-3 favourite categories + noise);
    * items belong to one of 20 categories and have latent vectors around their
      category centre; Zipf popularity (exponent 1.1) on a random permutation;
      a per-item quality term; 15% of the items launch during the window and get a
      decaying novelty boost (exposure and clicks);
    * sessions: user activity is log-normal, each session has a device (mostly the
      user's primary one), a device-dependent hour of day, an engagement intent, and
      a sequence of views picked by exposure = popularity x taste x context;
    * a view turns into a click with probability sigmoid(affinity + popularity +
      quality + hour/device/category context + session intent + "same category as
      the last click" + novelty); a click into a purchase with a smaller probability.

    Realism knobs (see REGIMES): activity_sigma (log-normal spread of user activity:
    heavy users), user_lifetime_share (each user arrives at a random time and stays
    an exponential share of the span; None = everyone all along), new_item_share and
    new_item_popularity (items launched during the span, and their popularity
    relative to the back catalogue), novelty_days (how long a launch boost lasts),
    revisits (False: a user never views the same item twice, like a rating log).
    """
    rng = np.random.default_rng(seed)
    d_true = 16
    k = N_CATEGORIES
    t0 = GENERATOR_START
    t_end = t0 + days * DAY

    # --- items -------------------------------------------------------------
    cat_share = rng.dirichlet(np.full(k, 4.0))
    item_cat = rng.choice(k, size=n_items, p=cat_share).astype(np.int32)
    centers = _normalize(rng.normal(size=(k, d_true)))
    item_vec = _normalize(centers[item_cat] + 0.55 * _normalize(rng.normal(size=(n_items, d_true))))
    ranks = rng.permutation(n_items) + 1
    zipf_w = ranks.astype(np.float64) ** -1.1
    log_pop = np.log(zipf_w)
    log_pop_c = log_pop - log_pop.mean()
    quality = rng.normal(0.0, 0.45, size=n_items)
    is_new = rng.random(n_items) < new_item_share
    created = np.where(
        is_new,
        t0 + (rng.random(n_items) * (days - 2) * DAY).astype(np.int64),
        t0 - (rng.random(n_items) * 180 * DAY).astype(np.int64) - DAY,
    ).astype(np.int64)

    # --- categories x context ----------------------------------------------
    cat_peak_hour = rng.random(k) * 24.0
    cat_device = rng.normal(0.0, 0.35, size=(k, 3))
    device_base = np.array([0.0, 0.15, -0.25])

    def hour_cat_boost(h):
        return np.cos(2 * np.pi * (h - cat_peak_hour) / 24.0)

    # --- users ---------------------------------------------------------------
    n_fav = rng.integers(1, 4, size=n_users)
    user_vec = np.zeros((n_users, d_true))
    for u in range(n_users):
        favs = rng.choice(k, size=n_fav[u], replace=False)
        wts = rng.dirichlet(np.ones(n_fav[u]))
        user_vec[u] = wts @ centers[favs]
    user_vec = _normalize(user_vec + 0.35 * _normalize(rng.normal(size=(n_users, d_true))))
    activity = rng.lognormal(0.0, activity_sigma, size=n_users)
    primary_device = rng.choice(3, size=n_users, p=[0.55, 0.30, 0.15])
    affinity = user_vec @ item_vec.T  # [U, I] in [-1, 1]
    base_exposure = 0.85 * (log_pop + np.where(is_new, np.log(new_item_popularity), 0.0))[None, :] + 3.2 * affinity  # log-weights

    # diurnal profile per device (probability over 24 hours)
    hours = np.arange(24)

    def bump(mu, sd):
        d = np.minimum(np.abs(hours - mu), 24 - np.abs(hours - mu))
        return np.exp(-0.5 * (d / sd) ** 2)

    diurnal = np.stack([
        0.3 + bump(8, 1.5) + bump(13, 1.5) + 2.0 * bump(21, 2.5),  # mobile
        0.1 + 1.5 * bump(11, 3.0) + bump(16, 2.0),  # desktop
        0.2 + 0.6 * bump(9, 2.0) + 2.0 * bump(20, 2.0),  # tablet
    ])
    diurnal /= diurnal.sum(axis=1, keepdims=True)

    # --- sessions ------------------------------------------------------------
    mean_len = 6.0
    est_views = n_events / 1.08  # ~8% of rows are clicks/purchases; surplus trimmed below
    n_sessions = int(math.ceil(est_views / mean_len))
    s_user = rng.choice(n_users, size=n_sessions, p=activity / activity.sum())
    if user_lifetime_share is None:
        s_day = rng.integers(0, days, size=n_sessions)
    else:
        arrive = rng.random(n_users) * days
        stay = np.minimum(rng.exponential(user_lifetime_share * days, size=n_users) + 1.0, days - arrive)
        s_day = np.minimum(days - 1, (arrive[s_user] + rng.random(n_sessions) * stay[s_user]).astype(np.int64))
    s_dev = np.where(rng.random(n_sessions) < 0.8, primary_device[s_user], rng.integers(0, 3, size=n_sessions))
    s_hour = np.array([rng.choice(24, p=diurnal[d]) for d in s_dev])
    s_start = t0 + s_day * DAY + s_hour * 3600 + rng.integers(0, 3600, size=n_sessions)
    s_len = rng.geometric(1.0 / mean_len, size=n_sessions)
    s_intent = rng.normal(0.0, 0.6, size=n_sessions)
    order = np.argsort(s_start, kind="stable")

    last_click_cat = np.full(n_users, -1, dtype=np.int64)
    viewed = None if revisits else np.zeros((n_users, n_items), dtype=bool)
    out_u, out_i, out_t, out_e, out_d, out_s = [], [], [], [], [], []
    for s in order:
        u = int(s_user[s])
        t = int(s_start[s])
        dv = int(s_dev[s])
        h = (t - t0) // 3600 % 24
        hb = hour_cat_boost(h)
        logits = base_exposure[u] + 0.6 * hb[item_cat]
        age = (t - created) / (novelty_days * DAY)
        heat = np.where(age >= 0, np.log1p(4.0 * np.exp(-np.maximum(age, 0))), 0.0)
        logits = logits + 1.5 * heat
        logits = np.where(created <= t, logits, -np.inf)
        if last_click_cat[u] >= 0:
            logits = logits + 0.7 * (item_cat == last_click_cat[u])
        if viewed is not None:
            logits = np.where(viewed[u], -np.inf, logits)
            if not np.isfinite(logits).any():
                continue
        p = np.exp(logits - logits.max())
        p /= p.sum()
        if viewed is None:
            picks = rng.choice(n_items, size=int(s_len[s]), p=p)
        else:
            picks = rng.choice(n_items, size=min(int(s_len[s]), int((p > 0).sum())), p=p, replace=False)
            viewed[u, picks] = True
        hour_base = 0.25 * math.cos(2 * math.pi * (h - 21) / 24.0)
        for it in picks:
            it = int(it)
            if t >= t_end:
                break
            c = int(item_cat[it])
            logit = (
                -4.6
                + 3.0 * affinity[u, it]
                + 0.18 * log_pop_c[it]
                + quality[it]
                + 0.5 * hb[c]
                + cat_device[c, dv]
                + device_base[dv]
                + hour_base
                + s_intent[s]
                + 0.6 * (c == last_click_cat[u])
                + 0.8 * heat[it]
            )
            out_u.append(u); out_i.append(it); out_t.append(t); out_e.append(VIEW); out_d.append(dv); out_s.append(s)
            gap = int(rng.exponential(40.0)) + 5
            if rng.random() < _sigmoid(logit):
                tc = t + int(rng.integers(2, 20))
                out_u.append(u); out_i.append(it); out_t.append(tc); out_e.append(CLICK); out_d.append(dv); out_s.append(s)
                last_click_cat[u] = c
                gap += 60
                if rng.random() < _sigmoid(-2.6 + 1.5 * affinity[u, it] + quality[it]):
                    tp = tc + int(rng.integers(30, 300))
                    out_u.append(u); out_i.append(it); out_t.append(tp); out_e.append(PURCHASE); out_d.append(dv); out_s.append(s)
            t += gap

    ts = np.array(out_t, dtype=np.int64)
    keep = ts < t_end
    # Trim whole sessions (random ones, so the time range stays intact) down to the
    # requested number of events.
    sess = np.array(out_s, dtype=np.int64)
    sess_rows = np.bincount(sess[keep], minlength=n_sessions)
    surplus = int(keep.sum()) - n_events
    if surplus > 0:
        dropped = np.zeros(n_sessions, dtype=bool)
        for s in rng.permutation(n_sessions):
            if surplus <= 0:
                break
            if sess_rows[s] and sess_rows[s] <= surplus + 3:
                dropped[s] = True
                surplus -= int(sess_rows[s])
        keep &= ~dropped[sess]
    ev = Events(
        user_ids=[f"u{x:0{id_width(n_users)}d}" for x in range(n_users)],
        item_ids=[f"i{x:0{id_width(n_items)}d}" for x in range(n_items)],
        categories=[f"c{x:02d}" for x in range(k)],
        item_category=item_cat,
        item_created=created,
        u=np.array(out_u, dtype=np.int32)[keep],
        i=np.array(out_i, dtype=np.int32)[keep],
        ts=ts[keep],
        ev=np.array(out_e, dtype=np.int8)[keep],
        dev=np.array(out_d, dtype=np.int8)[keep],
        hour=((ts[keep] // 3600) % 24).astype(np.int8),
    )
    ev.sort()
    ev.source = {
        "source": "generator",
        "seed": seed,
        "requested": {"users": n_users, "items": n_items, "events": n_events, "days": days},
    }
    return ev


# --------------------------------------------------------------------------------
# CSV loader
# --------------------------------------------------------------------------------

def _parse_ts(s: str, line: int) -> int:
    s = s.strip()
    try:
        return int(float(s))
    except ValueError:
        pass
    try:
        d = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError as e:
        raise SystemExit(f"line {line}: timestamp {s!r} is neither epoch seconds nor ISO-8601") from e
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return int(d.timestamp())


def _sorted_index(d: dict[str, int]):
    names = sorted(d)
    remap = np.empty(len(d), dtype=np.int32)
    for new, name in enumerate(names):
        remap[d[name]] = new
    return names, remap


def load_csv(path: str) -> Events:
    """Read `user_id,item_id,timestamp,event[,device][,hour][,category]`."""
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    item_cat_name: dict[int, str] = {}
    us, its, tss, evs, devs, hrs = [], [], [], [], [], []
    ev_index = {n: k for k, n in enumerate(EVENT_NAMES)}
    dev_index = {n: k for k, n in enumerate(DEVICES)}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = cols
        missing = {"user_id", "item_id", "timestamp", "event"} - set(cols)
        if missing:
            raise SystemExit(f"{path}: missing required column(s) {sorted(missing)}; the header must include user_id,item_id,timestamp,event")
        has_dev, has_hour, has_cat = "device" in cols, "hour" in cols, "category" in cols
        for n, row in enumerate(reader, start=2):
            e = row["event"].strip().lower()
            if e not in ev_index:
                raise SystemExit(f"line {n}: event {e!r} must be one of view|click|purchase")
            t = _parse_ts(row["timestamp"], n)
            u = users.setdefault(row["user_id"].strip(), len(users))
            it = items.setdefault(row["item_id"].strip(), len(items))
            us.append(u); its.append(it); tss.append(t); evs.append(ev_index[e])
            d = dev_index.get(row["device"].strip().lower(), -1) if has_dev and row["device"] else -1
            devs.append(d)
            if has_hour and row["hour"] not in (None, ""):
                hrs.append(int(float(row["hour"])) % 24)
            else:
                hrs.append((t // 3600) % 24)
            if has_cat and row.get("category"):
                item_cat_name.setdefault(it, row["category"].strip())
    if not us:
        raise SystemExit(f"{path}: no events")
    # index entities in sorted id order (independent of row order)
    user_names, user_map = _sorted_index(users)
    item_names, item_map = _sorted_index(items)
    users = dict(zip(user_names, range(len(user_names))))
    items = dict(zip(item_names, range(len(item_names))))
    us = user_map[np.array(us, dtype=np.int64)]
    its = item_map[np.array(its, dtype=np.int64)]
    item_cat_name = {int(item_map[k]): v for k, v in item_cat_name.items()}
    n_items = len(items)
    ts = np.array(tss, dtype=np.int64)
    it_arr = np.asarray(its, dtype=np.int32)
    first_seen = np.full(n_items, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_seen, it_arr, ts)
    if item_cat_name:
        categories = sorted(set(item_cat_name.values()))
        cidx = {c: k for k, c in enumerate(categories)}
        item_category = np.array([cidx.get(item_cat_name.get(x, ""), -1) for x in range(n_items)], dtype=np.int32)
        if (item_category < 0).any():
            # items without a category go to a catch-all bucket
            categories.append("other")
            item_category[item_category < 0] = len(categories) - 1
    else:
        categories = [f"c{x:02d}" for x in range(N_CATEGORIES)]
        item_category = np.full(n_items, -1, dtype=np.int32)  # filled by k-means later
    ev = Events(
        user_ids=list(users.keys()),
        item_ids=list(items.keys()),
        categories=categories,
        item_category=item_category,
        item_created=first_seen,
        u=np.asarray(us, dtype=np.int32),
        i=it_arr,
        ts=ts,
        ev=np.array(evs, dtype=np.int8),
        dev=np.array(devs, dtype=np.int8),
        hour=np.array(hrs, dtype=np.int8),
    )
    ev.sort()
    ev.source = {
        "source": "file",
        "file": os.path.basename(path),
        "file_sha256": digest,
        "categories_from": "file" if item_cat_name else "kmeans-on-embeddings",
    }
    return ev
