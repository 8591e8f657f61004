// Shadow traffic, measured. At shadow_percent, the edge sends a Predict to the stable
// version with the authority MIRRORED_AUTHORITY and mirrors it to the canary, whose
// copy Envoy marks by appending "-shadow" to the authority and whose answer it drops.
// (The edge rewrites the authority of every prediction route, so no caller can pose
// as either half.) Both instances hand their answer to one Redis script under the
// request's x-request-id (the mirror keeps it): the first stores its own, the second
// takes the first's and compares the two. The pair meets in Redis, so neither waits
// for the other and the caller's answer never waits for the shadow; the shadow's
// answer, its failures and its slowness stay in the shadow. A half whose other half
// never comes (the shadow failed) expires.
import { Counter, Histogram } from "prom-client";
import { registry, type Logger } from "../kit/index.js";
import { closeRedis, createRedis, type RedisClient, type RedisSettings } from "../kit/redis.js";
import { FallbackLevel } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { jaccard, rankBiasedOverlap, scoreDrift } from "./rank-agreement.js";

/** The authority the edge gives the stable version's copy of a mirrored Predict. */
export const MIRRORED_AUTHORITY = "prediction-mirrored";
/** Envoy's suffix on a mirrored request's authority. */
const SHADOW_AUTHORITY = `${MIRRORED_AUTHORITY}-shadow`;
/** Items compared: the top of each answer. */
const DEPTH = 10;
/** A half waits this long for the other. */
const HALF_TTL_S = 30;

export type MirrorRole = "primary" | "shadow";

/** A call's part in a mirrored pair, from its URL's authority; undefined when it is none. */
export function mirrorRole(url: string): MirrorRole | undefined {
  const start = url.indexOf("//") + 2;
  const end = url.indexOf("/", start);
  const host = url.slice(start, end === -1 ? undefined : end);
  return host === MIRRORED_AUTHORITY ? "primary" : host === SHADOW_AUTHORITY ? "shadow" : undefined;
}

interface Half {
  role: MirrorRole;
  version: string;
  rung: FallbackLevel;
  items: { itemId: string; score: number }[];
}

const pairLabels = ["primary_version", "shadow_version"] as const;

export const shadowPairs = new Counter({
  name: "recsys_prediction_shadow_pairs_total",
  help: "Mirrored Predicts whose primary and shadow answers met: compared (both from the full pipeline) or fallback (either came from a cheaper rung, so their rankings are not compared).",
  labelNames: [...pairLabels, "result"] as const,
  registers: [registry],
});

const agreementBuckets = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1];

export const shadowOverlap = new Histogram({
  name: "recsys_prediction_shadow_overlap",
  help: "Top-10 Jaccard overlap of the primary's and the shadow's answer to one mirrored Predict.",
  labelNames: pairLabels,
  buckets: agreementBuckets,
  registers: [registry],
});

export const shadowRbo = new Histogram({
  name: "recsys_prediction_shadow_rbo",
  help: "Rank-biased overlap (p = 0.9) of the primary's and the shadow's top 10 for one mirrored Predict.",
  labelNames: pairLabels,
  buckets: agreementBuckets,
  registers: [registry],
});

export const shadowScoreDrift = new Histogram({
  name: "recsys_prediction_shadow_score_drift",
  help: "Mean |shadow score - primary score| over the items both top-10 lists hold, per mirrored Predict (none when they share no item).",
  labelNames: pairLabels,
  buckets: [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1],
  registers: [registry],
});

const shadowHalvesUnstored = new Counter({
  name: "recsys_prediction_shadow_halves_failed_total",
  help: "Answers to mirrored Predicts that could not be handed to the pairing (Redis unreachable); their pair goes unmeasured.",
  registers: [registry],
});

/** Stores this half, or takes and removes the other one already there. Atomic, so exactly one side compares. */
const MEET = `
local other = redis.call('GET', KEYS[2])
if other then
  redis.call('DEL', KEYS[2])
  return other
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
`;

type MeetingClient = RedisClient & { recsysShadowMeet(keys: number, mine: string, other: string, half: string, ttl: number): Promise<string | null> };

/** Both halves' keys share one hash tag: one Cluster slot. */
const halfKey = (requestId: string, role: MirrorRole) => `{recsys:shadow:${requestId}}:${role}`;

export class ShadowPairing {
  private readonly redis: MeetingClient;

  constructor(
    settings: RedisSettings,
    private readonly version: string,
    private readonly options: { commandTimeoutMs: number; log: Logger },
  ) {
    this.redis = createRedis(settings, {
      commandTimeoutMs: options.commandTimeoutMs,
      name: "prediction-shadow",
      log: options.log,
      scripts: { recsysShadowMeet: { lua: MEET } },
    }) as MeetingClient;
  }

  /** Hands over one answer to a mirrored call, in the background: never fails, never waits. */
  offer(role: MirrorRole, requestId: string, rung: FallbackLevel, items: readonly { itemId: string; score: number }[]): void {
    const half: Half = { role, version: this.version, rung, items: items.slice(0, DEPTH).map(({ itemId, score }) => ({ itemId, score })) };
    const other: MirrorRole = role === "primary" ? "shadow" : "primary";
    this.redis
      .recsysShadowMeet(2, halfKey(requestId, role), halfKey(requestId, other), JSON.stringify(half), HALF_TTL_S)
      .then((found) => {
        if (!found) return;
        const theirs = JSON.parse(found) as Half;
        if (role === "primary") this.compare(half, theirs);
        else this.compare(theirs, half);
      })
      .catch(() => shadowHalvesUnstored.inc());
  }

  private compare(primary: Half, shadow: Half): void {
    const labels = { primary_version: primary.version, shadow_version: shadow.version };
    if (primary.rung !== FallbackLevel.PRIMARY || shadow.rung !== FallbackLevel.PRIMARY) {
      shadowPairs.inc({ ...labels, result: "fallback" });
      return;
    }
    shadowPairs.inc({ ...labels, result: "compared" });
    const a = primary.items.map((i) => i.itemId);
    const b = shadow.items.map((i) => i.itemId);
    shadowOverlap.observe(labels, jaccard(a, b));
    shadowRbo.observe(labels, rankBiasedOverlap(a, b));
    const drift = scoreDrift(primary.items, shadow.items);
    if (drift !== null) shadowScoreDrift.observe(labels, drift);
  }

  close(): Promise<void> {
    return closeRedis(this.redis);
  }
}
