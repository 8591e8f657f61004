import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Device, Priority, RequestContextSchema } from "../../../gen/recsys/common/v1/common_pb.js";
import { VariantConfigSchema } from "../../../gen/recsys/experiment/v1/experiment_pb.js";
import { Code, ConnectError } from "../../kit/index.js";
import { Admission } from "../admission.js";
import { MicroBatcher } from "../batcher.js";
import { checkTimeZone, contextBucket, localRequestFeatures } from "../context.js";
import { diversify } from "../ranking.js";
import { BUILT_IN_VARIANTS, fromExperiment, parseExplicitVariant } from "../variants.js";

/**
 * A model stand-in that scores a row by its first value and records each run's
 * size. A run finishes only when the test says so (finishRun), so what merges with
 * what depends on the order of events, never on how fast the machine is; each run
 * reports `runMs` as its run time and moves the batcher's clock by `clockMs`.
 */
function gatedRunner(runMs: number, clockMs = 0) {
  const runs: number[] = [];
  const waiting: (() => void)[] = [];
  const clock = { ms: 0 };
  const run = (features: Float32Array, rows: number) => {
    runs.push(rows);
    return new Promise<{ scores: Float32Array; runMs: number }>((resolve) =>
      waiting.push(() => {
        clock.ms += clockMs;
        resolve({ scores: Float32Array.from({ length: rows }, (_, i) => features[i * 2]!), runMs });
      }),
    );
  };
  /** Finishes the oldest run still going; resolves once its callers have their scores. */
  const finishRun = async () => {
    waiting.shift()!();
    await new Promise((r) => setImmediate(r));
  };
  /** Finishes runs, including those started meanwhile, until `promise` settles. */
  const finishAll = async <T>(promise: Promise<T>): Promise<T> => {
    let settled = false;
    void promise.finally(() => (settled = true)).catch(() => undefined);
    while (!settled) await finishRun();
    return promise;
  };
  return { runs, run, finishRun, finishAll, now: () => clock.ms };
}

const rowsOf = (...firsts: number[]) => Float32Array.from(firsts.flatMap((x) => [x, 0]));

describe("MicroBatcher", () => {
  const options = { width: 2, maxRows: 1000, maxWaitMs: 50, p99TargetMs: 1000, maxInFlight: 1 };

  it("runs a request on an idle model at once, without waiting for company", async () => {
    const { runs, run, finishAll } = gatedRunner(0);
    const batcher = new MicroBatcher(run, options);
    const scores = batcher.submit(rowsOf(7), 1);
    // Dispatched within submit itself: no timer, no wait for other requests.
    expect(runs).toEqual([1]);
    expect([...(await finishAll(scores))]).toEqual([7]);
  });

  it("merges requests that arrive while a run is in flight and hands each its own scores", async () => {
    const { runs, run, finishAll } = gatedRunner(1);
    const batcher = new MicroBatcher(run, options);
    const first = batcher.submit(rowsOf(1), 1);
    const rest = [batcher.submit(rowsOf(2, 3), 2), batcher.submit(rowsOf(4), 1), batcher.submit(rowsOf(5, 6, 7), 3)];
    expect(runs).toEqual([1]);
    const scores = await finishAll(Promise.all([first, ...rest]));
    expect(scores.map((s) => [...s])).toEqual([[1], [2, 3], [4], [5, 6, 7]]);
    expect(runs).toEqual([1, 6]);
  });

  it("never exceeds the row cap, except for a single oversized request", async () => {
    const { runs, run, finishAll } = gatedRunner(1);
    const batcher = new MicroBatcher(run, { ...options, maxRows: 4 });
    await finishAll(Promise.all([batcher.submit(rowsOf(0), 1), batcher.submit(rowsOf(1, 1, 1), 3), batcher.submit(rowsOf(2, 2), 2), batcher.submit(rowsOf(3, 3, 3, 3, 3), 5)]));
    expect(runs).toEqual([1, 3, 2, 5]);
  });

  it("fails every request of a failed run, and keeps serving", async () => {
    let fail = true;
    const batcher = new MicroBatcher(async (_features, rows) => {
      if (fail) throw new Error("boom");
      return { scores: new Float32Array(rows), runMs: 0 };
    }, options);
    await expect(batcher.submit(rowsOf(1), 1)).rejects.toThrow("boom");
    fail = false;
    await expect(batcher.submit(rowsOf(1), 1)).resolves.toHaveLength(1);
  });

  it("shrinks the row cap when a merged run takes more than half the p99 target, and grows it back on fast full batches", async () => {
    const slowRunner = gatedRunner(30);
    const slow = new MicroBatcher(slowRunner.run, { ...options, maxRows: 4000, p99TargetMs: 40 });
    await slowRunner.finishAll(slow.submit(rowsOf(1), 1));
    expect(slow.maxRows).toBe(4000);
    await slowRunner.finishAll(Promise.all([slow.submit(rowsOf(1), 1), slow.submit(rowsOf(2), 1), slow.submit(rowsOf(3), 1)]));
    expect(slowRunner.runs).toEqual([1, 1, 2]);
    expect(slow.maxRows).toBe(3000);
    const fastRunner = gatedRunner(1);
    const fast = new MicroBatcher(fastRunner.run, { ...options, maxRows: 4000, p99TargetMs: 40 });
    fast.maxRows = 1200;
    await fastRunner.finishAll(fast.submit(Float32Array.from({ length: 2400 }), 1200));
    expect(fast.maxRows).toBe(1350);
  });

  it("halves the max wait when requests' p99 passes the target, but keeps batches large when only queueing is slow", async () => {
    // Each run takes 3 ms on the batcher's clock but reports 0.1 ms of model time: the wait is queueing.
    const { run, finishAll, now } = gatedRunner(0.1, 3);
    const batcher = new MicroBatcher(run, { ...options, maxRows: 2000, p99TargetMs: 1, maxInFlight: 2, windowSize: 10, now });
    await finishAll(Promise.all(Array.from({ length: 10 }, () => batcher.submit(rowsOf(1), 1))));
    expect(batcher.maxWaitMs).toBe(25);
    expect(batcher.maxRows).toBe(2000);
  });
});

describe("Admission", () => {
  // The clock and the shedding timers are the test's: queueing delays are exact, whatever the machine's speed.
  beforeEach(() => void vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "performance"] }));
  afterEach(() => void vi.useRealTimers());

  it("admits up to the limit, then serves waiters by priority", async () => {
    const admission = new Admission(1, 1000);
    const first = await admission.acquire(Priority.NORMAL);
    const order: string[] = [];
    const low = admission.acquire(Priority.LOW).then((t) => (order.push("low"), t));
    const critical = admission.acquire(Priority.CRITICAL).then((t) => (order.push("critical"), t));
    expect(first.admitted).toBe(true);
    await vi.advanceTimersByTimeAsync(5);
    if (first.admitted) first.release();
    const c = await critical;
    expect(c).toMatchObject({ admitted: true, waitedMs: 5 });
    if (c.admitted) c.release();
    expect(await low).toMatchObject({ admitted: true, waitedMs: 5 });
    expect(order).toEqual(["critical", "low"]);
  });

  it("sheds LOW and NORMAL once the queueing delay passes the threshold, and still queues HIGH", async () => {
    const admission = new Admission(1, 20);
    const holder = await admission.acquire(Priority.HIGH);
    let lowOutcome: unknown;
    const waitingLow = admission.acquire(Priority.LOW).then((t) => (lowOutcome = t));
    const waitingHigh = admission.acquire(Priority.HIGH);
    await vi.advanceTimersByTimeAsync(19);
    expect(lowOutcome).toBeUndefined();
    await vi.advanceTimersByTimeAsync(2);
    expect(await waitingLow).toMatchObject({ admitted: false, waitedMs: 20 });
    expect(await admission.acquire(Priority.NORMAL)).toMatchObject({ admitted: false, waitedMs: 0 });
    if (holder.admitted) holder.release();
    expect(await waitingHigh).toMatchObject({ admitted: true, waitedMs: 21 });
  });
});

describe("ranking helpers", () => {
  it("caps items per category among the diverse picks, then follows with the best skipped", () => {
    const items = [
      { id: "a1", category: "a", score: 0.9 },
      { id: "a2", category: "a", score: 0.8 },
      { id: "a3", category: "a", score: 0.7 },
      { id: "b1", category: "b", score: 0.1 },
    ];
    expect(diversify(items, 3, 2).map((i) => i.id)).toEqual(["a1", "a2", "b1"]);
    expect(diversify(items, 4, 1).map((i) => i.id)).toEqual(["a1", "b1", "a2", "a3"]);
  });
});

describe("context", () => {
  const at = (iso: string, timeZone = "", device = Device.MOBILE) =>
    create(RequestContextSchema, { device, timeZone, timestamp: timestampFromMs(Date.parse(iso)) });

  it("buckets by device and local 3-hour window", () => {
    expect(contextBucket(at("2025-03-01T10:30:00Z"))).toBe("mobile.h9");
    expect(contextBucket(at("2025-03-01T10:30:00Z", "Asia/Tokyo", Device.DESKTOP))).toBe("desktop.h18");
    expect(contextBucket(undefined, Date.parse("2025-03-01T00:10:00Z"))).toBe("unspecified.h0");
  });

  it("computes the request features the feature service would", () => {
    const features = localRequestFeatures(at("2025-03-01T06:00:00Z"));
    expect(features.hour_sin).toBeCloseTo(1, 6);
    expect(features.device_mobile).toBe(1);
    expect(features.device_tablet).toBe(0);
  });

  it("refuses an unknown time zone, naming the field", () => {
    expect(() => checkTimeZone("Mars/Olympus", "context.time_zone")).toThrow(/context.time_zone: unknown IANA time zone/);
    expect(() => checkTimeZone("Europe/Paris", "context.time_zone")).not.toThrow();
  });
});

describe("variants", () => {
  it("knows built-in names and experiment/variant pairs, refuses the rest naming the field", () => {
    expect(parseExplicitVariant("auto", "model_variant")).toBeUndefined();
    expect(parseExplicitVariant("gbdt-only", "model_variant")).toEqual({ builtIn: BUILT_IN_VARIANTS.get("gbdt-only") });
    expect(parseExplicitVariant("ranker-test/treatment", "model_variant")).toEqual({ experimentId: "ranker-test", variant: "treatment" });
    const err = ConnectError.from((() => {
      try {
        parseExplicitVariant("turbo", "requests[1].model_variant");
      } catch (e) {
        return e;
      }
    })());
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toMatch(/^requests\[1\].model_variant: unknown variant "turbo"/);
  });

  it("keys variants by their configuration, so an edited experiment never serves old answers", () => {
    const a = fromExperiment("exp", "treatment", undefined);
    const b = fromExperiment("exp", "treatment", create(VariantConfigSchema, { ensembleWeights: { "ranker-mlp": 1 } }));
    expect(a.key).not.toBe(b.key);
    expect(b.weights).toEqual({ "ranker-mlp": 1 });
  });
});
