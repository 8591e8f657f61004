import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestRedis, type TestRedisTarget } from "../../../test/support/redis-cluster.js";
import { fromFeatureValue } from "../codec.js";
import { connectRedis, type RedisClient } from "../../kit/redis.js";
import { featureScripts } from "../lua.js";
import type { BatchView, JsonFeatureValue } from "../registry.js";
import { OnlineStore } from "../store.js";

/** A view with one feature of every type (the registry's batch views use only some). */
const everyType: BatchView = {
  name: "every_type",
  source: "batch",
  entity: "item",
  ttlSeconds: 3_600,
  features: [
    { name: "d", type: "double", default: 0, description: "" },
    { name: "i", type: "int64", default: "0", description: "" },
    { name: "s", type: "string", default: "", description: "" },
    { name: "b", type: "bool", default: false, description: "" },
    { name: "fl", type: "float_list", default: [], description: "" },
    { name: "sl", type: "string_list", default: [], description: "" },
    { name: "dm", type: "double_map", default: {}, description: "" },
  ],
};

const values: Record<string, JsonFeatureValue> = {
  d: -1.5e-7,
  i: "-9223372036854775808",
  s: "ünïcode ✓",
  b: true,
  fl: [0.5, -2, 1024],
  sl: ["a", "", "c"],
  dm: { c00: 0.25, "with space": 1e6 },
};

describe("online store on a real Redis", () => {
  let redis: TestRedisTarget;
  let client: RedisClient;

  beforeAll(async () => {
    redis = await startTestRedis();
    client = await connectRedis(redis.env, { commandTimeoutMs: 2_000, readyTimeoutMs: 5_000, scripts: featureScripts });
  });

  afterAll(async () => {
    client.disconnect();
    await redis.stop();
  });

  it("round-trips a value of every type with its event time", async () => {
    const store = new OnlineStore(client, 1, { maxEntities: 0, batchTtlMs: 1, streamTtlMs: 1, absentTtlMs: 1 });
    const now = Date.now();
    await store.writeRows([{ view: everyType, entityId: "all-types", eventTimeMs: now, values }]);
    const [row, missing] = await store.readRows(everyType, ["all-types", "absent"]);
    expect(missing).toBeUndefined();
    expect(row!.eventTimeMs).toBe(now);
    for (const feature of everyType.features) {
      expect(fromFeatureValue(feature.type, row!.values.get(feature.name)!), feature.name).toEqual({ value: values[feature.name] });
    }
  });

  it("serves hot entities from its cache until the TTL, absent ones for a shorter one, and its own writes at once", async () => {
    // The cache's clock moves only when the test says, so a slow machine cannot expire an entry early.
    const clock = { ms: 1_000, now: () => clock.ms };
    const store = new OnlineStore(client, 1, { maxEntities: 100, batchTtlMs: 300, streamTtlMs: 1, absentTtlMs: 100, clock });
    const now = Date.now();
    const d = async (id: string) => (await store.readRows(everyType, [id]))[0]?.values.get("d")?.kind.value;
    await store.writeRows([{ view: everyType, entityId: "hot", eventTimeMs: now, values: { d: 1 } }]);
    expect(await d("hot")).toBe(1);
    expect(await d("cold")).toBeUndefined();

    // Changed behind the cache's back (another replica writing): not seen until the TTL passes.
    const other = new OnlineStore(client, 1, { maxEntities: 0, batchTtlMs: 1, streamTtlMs: 1, absentTtlMs: 1 });
    await other.writeRows([
      { view: everyType, entityId: "hot", eventTimeMs: now + 1, values: { d: 2 } },
      { view: everyType, entityId: "cold", eventTimeMs: now + 1, values: { d: 2 } },
    ]);
    expect(await d("hot")).toBe(1);
    expect(await d("cold")).toBeUndefined();
    // Absent: read again after its own TTL (a materialisation writing it is seen soon).
    clock.ms += 99;
    expect(await d("cold")).toBeUndefined();
    clock.ms += 2;
    expect(await d("cold")).toBe(2);
    clock.ms += 198;
    expect(await d("hot")).toBe(1);
    clock.ms += 2;
    expect(await d("hot")).toBe(2);

    // Written through this store: visible at once.
    await store.writeRows([{ view: everyType, entityId: "hot", eventTimeMs: now + 2, values: { d: 3 } }]);
    expect(await d("hot")).toBe(3);
  });
});
