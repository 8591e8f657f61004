// Predict traffic as production sends it, for canary drills and the canary mesh tests:
// open loop at a fixed rate through the edge, users drawn Zipf(1.1) from the most
// active first (the ones the prediction cache holds), caches on. Counts every call,
// the failures by message, and which prediction version answered.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { PredictionService } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { zipfSampler } from "../../bench/harness.js";
import { ROOT } from "./tools.js";

/** User ids, most active first (user_log_events of the committed batch features). */
export function usersByActivity(): string[] {
  return readFileSync(join(ROOT, "models", "features", "v1", "user_features.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line) as { entity_id: string; values: { user_log_events: number } })
    .sort((a, b) => b.values.user_log_events - a.values.user_log_events || (a.entity_id < b.entity_id ? -1 : 1))
    .map((row) => row.entity_id);
}

export interface TrafficOptions {
  /** The edge, host:port. */
  edge: string;
  /** A bearer token (anonymous callers get a small per-address limit). */
  token: string;
  rps: number;
  users: string[];
  seed?: number;
  /** Calls in flight at most: past it the generator waits instead of piling up. */
  maxInFlight?: number;
  timeoutMs?: number;
}

export interface TrafficTally {
  calls: number;
  failures: number;
  /** Failures by "CODE: message". */
  failuresByMessage: Record<string, number>;
  /** Answers by the version that gave them (x-service-version). */
  answersByVersion: Record<string, number>;
  /** The first failures: when each call began (ISO time) and its "CODE: message". */
  firstFailures: { at: string; failure: string }[];
}

/** What happened between two tallies of one generator (the first failures: those after `before`). */
export function tallySince(after: TrafficTally, before: TrafficTally): TrafficTally {
  const diff = (a: Record<string, number>, b: Record<string, number>) => Object.fromEntries(Object.entries(a).map(([k, v]) => [k, v - (b[k] ?? 0)]).filter(([, v]) => v !== 0));
  return {
    calls: after.calls - before.calls,
    failures: after.failures - before.failures,
    failuresByMessage: diff(after.failuresByMessage, before.failuresByMessage),
    answersByVersion: diff(after.answersByVersion, before.answersByVersion),
    firstFailures: after.firstFailures.slice(before.firstFailures.length),
  };
}

export interface Traffic {
  tally(): TrafficTally;
  /** Stops issuing calls, waits for those in flight, and returns the final tally. */
  stop(): Promise<TrafficTally>;
}

export function startTraffic(o: TrafficOptions): Traffic {
  const client = createClient(PredictionService, createGrpcTransport({ baseUrl: `http://${o.edge}` }));
  const headers = { authorization: `Bearer ${o.token}` };
  const zipf = zipfSampler(o.users.length, 1.1, o.seed ?? 42);
  const maxInFlight = o.maxInFlight ?? 64;
  const tally: TrafficTally = { calls: 0, failures: 0, failuresByMessage: {}, answersByVersion: {}, firstFailures: [] };
  const inFlight = new Set<Promise<void>>();
  const started = performance.now();
  let issued = 0;

  const call = async () => {
    tally.calls++;
    const at = new Date().toISOString();
    let version = "none";
    try {
      await client.predict({ userId: o.users[zipf()]!, numPredictions: 10 }, { headers, timeoutMs: o.timeoutMs ?? 5000, onHeader: (h) => (version = h.get("x-service-version") ?? "none") });
      tally.answersByVersion[version] = (tally.answersByVersion[version] ?? 0) + 1;
    } catch (err) {
      const e = ConnectError.from(err);
      const key = `${e.code}: ${e.rawMessage}`;
      tally.failures++;
      tally.failuresByMessage[key] = (tally.failuresByMessage[key] ?? 0) + 1;
      if (tally.firstFailures.length < 1000) tally.firstFailures.push({ at, failure: key });
    }
  };
  // Open loop: every tick issues the calls due by now, so a slow answer does not slow the
  // arrivals (up to maxInFlight, the bound on what one generator may hold).
  const timer = setInterval(() => {
    const due = Math.floor(((performance.now() - started) / 1000) * o.rps);
    while (issued < due && inFlight.size < maxInFlight) {
      issued++;
      const p = call().finally(() => inFlight.delete(p));
      inFlight.add(p);
    }
    issued = Math.max(issued, due - o.rps); // a stall of more than a second is not made up in one burst
  }, 10);
  const snapshot = () => structuredClone(tally);
  return {
    tally: snapshot,
    stop: async () => {
      clearInterval(timer);
      await Promise.all([...inFlight]);
      return snapshot();
    },
  };
}
