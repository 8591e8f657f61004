// The prediction service's item feature cache against a real feature service and
// Redis: entries past their refresh age are served at once and renewed in the
// background, so a request waits only for items it has never seen; an item the
// store held nothing of is read again a second later.
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { EntityType, FeatureService } from "../../../gen/recsys/feature/v1/feature_pb.js";
import { startRedis, type TestRedis } from "../../../test/support/redis.js";
import { startFeatureService } from "../../feature/server.js";
import { createServiceClient, registry, type RunningServer } from "../../kit/index.js";
import { FeatureReader } from "../features.js";
import { waitServing } from "../../../scripts/lib/mesh.js";

const EVENTUALLY = { timeout: 20_000, interval: 50 };
const VERSION = "item-features-test";

async function lookups(result: string): Promise<number> {
  const values = (await registry.getSingleMetric("recsys_prediction_item_feature_cache_total")?.get())?.values ?? [];
  return values.filter((v) => v.labels.version === VERSION && v.labels.result === result).reduce((sum, v) => sum + v.value, 0);
}

/** A reader over `client` with small caches; `items` overrides the item cache options. */
function readerOf(
  client: ReturnType<typeof createServiceClient<typeof FeatureService>>,
  items: { itemRefreshMs: number; itemMaxAgeMs: number; itemCacheEntries?: number; itemUnknownMs?: number; now?: () => number },
) {
  return new FeatureReader(client, { userCacheEntries: 10, userCacheTtlMs: 60_000, itemCacheEntries: 100, itemUnknownMs: 1_000, version: VERSION, ...items });
}

describe("item feature cache", () => {
  let redis: TestRedis;
  let feature: RunningServer;
  let writes = 0;
  const write = (itemId: string, ctr: number) =>
    createServiceClient(FeatureService, `127.0.0.1:${feature.port}`).writeFeatures(
      {
        rows: [
          {
            entityType: EntityType.ITEM,
            entityId: itemId,
            featureView: "item_profile",
            values: { item_ctr: { kind: { case: "doubleValue", value: ctr } } },
            // Each write newer than the last, or the store keeps the older one.
            eventTime: timestampFromMs(Date.now() + ++writes * 1000),
          },
        ],
      },
      { timeoutMs: 20_000 },
    );

  beforeAll(async () => {
    redis = await startRedis();
    feature = await startFeatureService({ GRPC_PORT: "0", LOG_LEVEL: "silent", REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: "5000" });
    // The feature service listens before its Redis connection is up (NOT_SERVING until then).
    await waitServing(`127.0.0.1:${feature.port}`, "", 30_000);
  }, 60_000);
  afterAll(async () => {
    await feature?.shutdown();
    await redis?.stop();
  });

  it("serves an entry past its refresh age at once and renews it in the background; only unseen items are read by the request", async () => {
    const reader = readerOf(createServiceClient(FeatureService, `127.0.0.1:${feature.port}`), { itemRefreshMs: 0, itemMaxAgeMs: 60 * 60_000 });
    await write("item-a", 0.1);
    const missesBefore = await lookups("miss");
    expect((await reader.itemFeatures(["item-a"], 20_000)).get("item-a")?.["item_profile:item_ctr"]).toBe(0.1);
    expect((await lookups("miss")) - missesBefore).toBe(1);

    await write("item-a", 0.2);
    // Served from the cache at once (the old value), renewed behind it.
    const refreshesBefore = await lookups("refresh");
    expect((await reader.itemFeatures(["item-a"], 20_000)).get("item-a")?.["item_profile:item_ctr"]).toBe(0.1);
    expect((await lookups("refresh")) - refreshesBefore).toBe(1);
    await vi.waitFor(async () => expect((await reader.itemFeatures(["item-a"], 20_000)).get("item-a")?.["item_profile:item_ctr"]).toBe(0.2), EVENTUALLY);
    expect((await lookups("miss")) - missesBefore).toBe(1);
  });

  it("prefetches items in batches, so a request after it reads none", async () => {
    const reader = readerOf(createServiceClient(FeatureService, `127.0.0.1:${feature.port}`), { itemRefreshMs: 60_000, itemMaxAgeMs: 60 * 60_000, itemCacheEntries: 5_000, now: () => 0 });
    await write("item-c", 0.4);
    await write("item-d", 0.5);
    const ids = ["item-c", ...Array.from({ length: 1_500 }, (_, i) => `item-unknown-${i}`), "item-d"];
    expect(await reader.prefetchItems(ids)).toBe(2);
    const missesBefore = await lookups("miss");
    const read = await reader.itemFeatures(["item-c", "item-d", "item-unknown-1499"], 20_000);
    expect([read.get("item-c")?.["item_profile:item_ctr"], read.get("item-d")?.["item_profile:item_ctr"]]).toEqual([0.4, 0.5]);
    expect(await lookups("miss")).toBe(missesBefore);
  });

  it("reads an item it found no features of again after a second, not at the refresh age: features materialised after a prefetch are used at once", async () => {
    let now = 0;
    const reader = readerOf(createServiceClient(FeatureService, `127.0.0.1:${feature.port}`), { itemRefreshMs: 30_000, itemMaxAgeMs: 60 * 60_000, now: () => now });
    expect(await reader.prefetchItems(["item-e"])).toBe(0);
    await write("item-e", 0.6);
    // Within the second the empty answer (the registry's default) stands: an item with no features costs one read a second at most.
    expect((await reader.itemFeatures(["item-e"], 20_000)).get("item-e")?.["item_profile:item_ctr"]).toBe(0);
    now = 1_000;
    const missesBefore = await lookups("miss");
    expect((await reader.itemFeatures(["item-e"], 20_000)).get("item-e")?.["item_profile:item_ctr"]).toBe(0.6);
    expect((await lookups("miss")) - missesBefore).toBe(1);
    // Known now: held for the refresh age like any other.
    now = 20_000;
    expect((await reader.itemFeatures(["item-e"], 20_000)).get("item-e")?.["item_profile:item_ctr"]).toBe(0.6);
    expect((await lookups("miss")) - missesBefore).toBe(1);
  });

  it("keeps serving cached items while the feature service is away, up to their maximum age; an unseen item fails the read", async () => {
    const address = `127.0.0.1:${feature.port}`;
    let reachable = true;
    const client = createServiceClient(FeatureService, address);
    // A client whose calls fail while `reachable` is false: the outage, injected on purpose.
    const flaky = {
      getOnlineFeatures: (...args: Parameters<typeof client.getOnlineFeatures>) =>
        reachable ? client.getOnlineFeatures(...args) : Promise.reject(new Error("feature service unreachable")),
    } as typeof client;
    const reader = readerOf(flaky, { itemRefreshMs: 0, itemMaxAgeMs: 60 * 60_000 });
    await write("item-b", 0.3);
    await reader.itemFeatures(["item-b"], 20_000);
    reachable = false;
    expect((await reader.itemFeatures(["item-b"], 20_000)).get("item-b")?.["item_profile:item_ctr"]).toBe(0.3);
    await expect(reader.itemFeatures(["item-b", "item-never-seen"], 20_000)).rejects.toThrow(/unreachable/);

    const expiring = readerOf(flaky, { itemRefreshMs: 0, itemMaxAgeMs: 0 });
    reachable = true;
    await expiring.itemFeatures(["item-b"], 20_000);
    reachable = false;
    await expect(expiring.itemFeatures(["item-b"], 20_000)).rejects.toThrow(/unreachable/);
  });
});
