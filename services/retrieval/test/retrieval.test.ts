// The retrieval service through gRPC on a real server (port 0) over a known
// clustered catalogue written in the training pipeline's layout.
import { rmSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus } from "../../../gen/grpc/health/v1/health_pb.js";
import { CandidateSource, RetrievalService } from "../../../gen/recsys/retrieval/v1/retrieval_pb.js";
import type { Client } from "@connectrpc/connect";
import { createServiceClient } from "../../kit/index.js";
import type { RetrievalServer } from "../server.js";
import { failure, invalidField, reason, recall, startRetrieval, tempDir } from "./helpers.js";
import { row, syntheticCatalogue, writeModels } from "./synthetic.js";
import { startRetrievalService } from "../server.js";

const DIM = 32;
const ADMIN_TOKEN = "test-admin-token";
const admin = { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } };
const catalogue = syntheticCatalogue({ items: 2000, users: 20, dim: DIM, clusters: 20, categories: 20, seed: 7 });
const queries = catalogue.space.sample(50);
const metric = (metrics: string, name: string) => Number(metrics.split("\n").find((line) => line.startsWith(`${name} `))?.split(" ")[1] ?? 0);
const ids = (response: { candidates: { itemId: string }[] }) => response.candidates.map((c) => c.itemId);

describe("retrieval service over gRPC", () => {
  const dir = tempDir("grpc");
  const env = {
    MODELS_DIR: join(dir, "models"),
    RETRIEVAL_DATA_DIR: join(dir, "data"),
    // Nothing listens there: these tests do not read popular lists.
    REDIS_URL: "redis://127.0.0.1:9",
    METRICS_PORT: "0",
    ADMIN_TOKEN,
  };
  let server: RetrievalServer;
  let client: Client<typeof RetrievalService>;
  const scrape = async () => (await fetch(`http://127.0.0.1:${server.metricsPort}/metrics`)).text();

  beforeAll(async () => {
    writeModels(env.MODELS_DIR, catalogue);
    ({ server, client } = await startRetrieval(env));
  });
  afterAll(async () => {
    await server?.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });

  it("is SERVING once the index is built from the artifacts, and describes it", async () => {
    const health = createServiceClient(Health, `127.0.0.1:${server.port}`);
    expect((await health.check({ service: "recsys.retrieval.v1.RetrievalService" })).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    const info = await client.indexInfo({});
    expect(info).toMatchObject({ size: 2000n, deleted: 0n, dimension: DIM, m: 16, efConstruction: 100, efSearch: 100, space: "ip", origin: "artifacts" });
    expect(info.capacity).toBeGreaterThanOrEqual(2000n);
    expect(info.version).toMatch(/^v1-\d{8}T\d{6}Z-[0-9a-f]{4}$/);
  });

  it("finds the exact top 10 with recall >= 0.95 on a clustered catalogue", async () => {
    let total = 0;
    for (let q = 0; q < 50; q++) {
      const embedding = { values: row(queries, q, DIM) };
      const [ann, exact] = await Promise.all([client.search({ query: { case: "embedding", value: embedding }, k: 10 }), client.search({ query: { case: "embedding", value: embedding }, k: 10, exact: true })]);
      expect(ann.candidates[0]?.sources.map((s) => s.source)).toEqual([CandidateSource.ANN]);
      expect(exact.candidates[0]?.sources.map((s) => s.source)).toEqual([CandidateSource.EXACT]);
      expect(exact.candidates).toHaveLength(10);
      total += recall(ids(ann), ids(exact));
    }
    expect(total / 50).toBeGreaterThanOrEqual(0.95);
  });

  it("filters inside the search: k items of a 5% category, none of an excluded one or an excluded id", async () => {
    let total = 0;
    for (let q = 0; q < 20; q++) {
      const query = { case: "embedding" as const, value: { values: row(queries, q, DIM) } };
      const filter = { includeCategories: ["cat-3"] };
      const [ann, exact] = await Promise.all([client.search({ query, k: 10, filter }), client.search({ query, k: 10, filter, exact: true })]);
      // A filter applied after a top-10 search would leave about one item of a 5% category.
      expect(ann.candidates).toHaveLength(10);
      expect(new Set(ann.candidates.map((c) => c.category))).toEqual(new Set(["cat-3"]));
      total += recall(ids(ann), ids(exact));
    }
    expect(total / 20).toBeGreaterThanOrEqual(0.9);

    const query = { case: "embedding" as const, value: { values: row(queries, 0, DIM) } };
    const top = ids(await client.search({ query, k: 10 }));
    const excluded = await client.search({ query, k: 10, filter: { excludeItemIds: top, excludeCategories: ["cat-0", "cat-1"] } });
    expect(excluded.candidates).toHaveLength(10);
    expect(ids(excluded).filter((id) => top.includes(id))).toEqual([]);
    expect(excluded.candidates.filter((c) => c.category === "cat-0" || c.category === "cat-1")).toEqual([]);
  });

  it("searches by a user's embedding and by an item's, which it leaves out of its own neighbours", async () => {
    const byUser = await client.search({ query: { case: "userId", value: "user-3" }, k: 20 });
    const byVector = await client.search({ query: { case: "embedding", value: { values: row(catalogue.userVectors, 3, DIM) } }, k: 20 });
    expect(ids(byUser)).toEqual(ids(byVector));
    const byItem = await client.search({ query: { case: "itemId", value: "item-42" }, k: 20 });
    expect(byItem.candidates).toHaveLength(20);
    expect(ids(byItem)).not.toContain("item-42");
    expect(byItem.candidates[0]!.score).toBeGreaterThan(byItem.candidates[19]!.score);
  });

  it("answers bad input with clear statuses naming the field", async () => {
    const wrongDim = await failure(client.search({ query: { case: "embedding", value: { values: [1, 2, 3] } }, k: 10 }));
    expect(invalidField(wrongDim)).toBe("embedding.values");
    expect(wrongDim.rawMessage).toMatch(/3 values; the index dimension is 32/);
    const nan = await failure(client.search({ query: { case: "embedding", value: { values: [...row(queries, 0, DIM).slice(1), Number.NaN] } }, k: 10 }));
    expect(invalidField(nan)).toBe("embedding.values");
    for (const k of [0, 1001]) expect(invalidField(await failure(client.search({ query: { case: "userId", value: "user-1" }, k })))).toBe("k");
    expect(invalidField(await failure(client.search({ k: 10 })))).toBe("query");

    const unknownUser = await failure(client.search({ query: { case: "userId", value: "nobody" }, k: 10 }));
    expect([unknownUser.code, reason(unknownUser)]).toEqual([Code.NotFound, "USER_NOT_FOUND"]);
    const unknownItem = await failure(client.search({ query: { case: "itemId", value: "no-such-item" }, k: 10 }));
    expect([unknownItem.code, reason(unknownItem)]).toEqual([Code.NotFound, "ITEM_NOT_FOUND"]);

    const good = { itemId: "fresh-1", category: "cat-1", embedding: row(queries, 0, DIM) };
    const badUpsert = await failure(client.upsertItems({ items: [good, { itemId: "fresh-2", category: "cat-1", embedding: [1, 2] }] }));
    expect(invalidField(badUpsert)).toBe("items[1].embedding");
    const zero = await failure(client.upsertItems({ items: [{ ...good, embedding: new Array<number>(DIM).fill(0) }] }));
    expect(invalidField(zero)).toBe("items[0].embedding");
    const duplicate = await failure(client.upsertItems({ items: [good, good] }));
    expect(invalidField(duplicate)).toBe("items[1].item_id");
    // All or none: the valid first item of the rejected requests is not there.
    expect(await failure(client.search({ query: { case: "itemId", value: "fresh-1" }, k: 1 }))).toMatchObject({ code: Code.NotFound });

    expect((await failure(client.rebuildIndex({}))).code).toBe(Code.Unauthenticated);
    expect((await failure(client.rebuildIndex({}, { headers: { authorization: "Bearer wrong-token" } }))).code).toBe(Code.Unauthenticated);
  });

  it("makes an upserted item searchable at once, growing the index past its capacity", async () => {
    const before = await client.indexInfo({});
    const fresh = Array.from({ length: 400 }, (_, i) => ({ itemId: `new-${i}`, category: "cat-new", embedding: row(catalogue.space.sample(1), 0, DIM) }));
    const inserted = await client.upsertItems({ items: fresh });
    expect(inserted).toMatchObject({ inserted: 400, updated: 0, indexVersion: before.version });
    const after = await client.indexInfo({});
    expect(after.size).toBe(before.size + 400n);
    expect(after.capacity).toBeGreaterThan(before.capacity);

    const target = fresh[123]!;
    const found = await client.search({ query: { case: "embedding", value: { values: target.embedding } }, k: 5 });
    expect(found.candidates[0]).toMatchObject({ itemId: "new-123", category: "cat-new" });
    expect(found.candidates[0]!.score).toBeCloseTo(1, 5);
    const inCategory = await client.search({ query: { case: "embedding", value: { values: target.embedding } }, k: 400, filter: { includeCategories: ["cat-new"] } });
    expect(inCategory.candidates).toHaveLength(400);

    // Replacing moves the item: its new vector and category answer at once.
    const moved = await client.upsertItems({ items: [{ itemId: "new-123", category: "cat-moved", embedding: row(queries, 7, DIM) }] });
    expect(moved).toMatchObject({ inserted: 0, updated: 1 });
    const near = await client.search({ query: { case: "embedding", value: { values: row(queries, 7, DIM) } }, k: 1, filter: { includeCategories: ["cat-moved"] } });
    expect(ids(near)).toEqual(["new-123"]);
  });

  it("never returns a deleted item again, also after a rebuild", async () => {
    const query = { case: "embedding" as const, value: { values: row(queries, 11, DIM) } };
    const victims = ids(await client.search({ query, k: 3, exact: true }));
    expect(await client.deleteItems({ itemIds: [...victims, "never-existed"] })).toMatchObject({ deleted: 3, notFound: 1 });
    expect((await client.indexInfo({})).deleted).toBe(3n);

    const visible = async () => {
      const seen = [
        ...ids(await client.search({ query, k: 50 })),
        ...ids(await client.search({ query, k: 50, exact: true })),
        ...ids(await client.search({ query, k: 50, filter: { excludeCategories: ["cat-9"] } })),
      ];
      return seen.filter((id) => victims.includes(id));
    };
    expect(await visible()).toEqual([]);
    expect((await failure(client.search({ query: { case: "itemId", value: victims[0]! }, k: 5 }))).code).toBe(Code.NotFound);

    const rebuilt = await client.rebuildIndex({}, admin);
    const info = await client.indexInfo({});
    expect(info).toMatchObject({ version: rebuilt.version, deleted: 0n, origin: "rebuild", size: rebuilt.size });
    expect(await visible()).toEqual([]);

    // Upserting a deleted id brings it back as a new item.
    const restored = await client.upsertItems({ items: [{ itemId: victims[0]!, category: "cat-1", embedding: row(queries, 11, DIM) }] });
    expect(restored.inserted).toBe(1);
    expect(ids(await client.search({ query, k: 1 }))).toEqual([victims[0]]);
    await client.deleteItems({ itemIds: [victims[0]!] });
  });

  it("swaps in a rebuilt index under concurrent searches without failing one, keeping ops made during the rebuild", async () => {
    const before = await client.indexInfo({});
    const replayedBefore = metric(await scrape(), "recsys_retrieval_rebuild_replayed_ops_total");
    const query = { case: "embedding" as const, value: { values: row(queries, 20, DIM) } };
    const doomed = ids(await client.search({ query, k: 1, exact: true }))[0]!;

    let rebuilding = true;
    let searches = 0;
    const versions = new Set<string>();
    const searchLoop = async (worker: number) => {
      const deadline = Date.now() + 30_000;
      while (rebuilding && Date.now() < deadline) {
        const response = await client.search({ query: { case: "embedding", value: { values: row(queries, (worker * 7 + searches) % 50, DIM) } }, k: 10 });
        expect(response.candidates).toHaveLength(10);
        versions.add(response.indexVersion);
        searches++;
      }
    };
    const rebuild = client.rebuildIndex({}, admin).finally(() => (rebuilding = false));
    const loops = Promise.all([0, 1, 2, 3].map(searchLoop));
    // Sent together, right behind the rebuild on the same connection, so they need the rebuild
    // to outlast only about one round trip.
    const [upserted, deleted] = await Promise.all([
      client.upsertItems({ items: [{ itemId: "during-rebuild", category: "cat-2", embedding: row(queries, 21, DIM) }] }),
      client.deleteItems({ itemIds: [doomed] }),
    ]);
    const rebuilt = await rebuild;
    await loops;

    // Both ops landed on the old index while the new one was being built...
    expect(upserted.indexVersion).toBe(before.version);
    expect(deleted.deleted).toBe(1);
    expect(rebuilt.previousVersion).toBe(before.version);
    expect(versions.has(before.version)).toBe(true);
    expect(searches).toBeGreaterThan(4);
    // ...and were replayed on the new one before the swap.
    expect(metric(await scrape(), "recsys_retrieval_rebuild_replayed_ops_total") - replayedBefore).toBe(2);
    const after = await client.indexInfo({});
    expect(after.version).toBe(rebuilt.version);
    expect(after.size).toBe(before.size);
    expect(ids(await client.search({ query: { case: "embedding", value: { values: row(queries, 21, DIM) } }, k: 1 }))).toEqual(["during-rebuild"]);
    expect(ids(await client.search({ query, k: 100, exact: true }))).not.toContain(doomed);
  });

  it("publishes search latency, candidates per source, index size and version in /metrics", async () => {
    const info = await client.indexInfo({});
    const metrics = await scrape();
    expect(metrics).toMatch(/recsys_retrieval_search_seconds_bucket\{[^}]*mode="ann"/);
    expect(metrics).toMatch(/recsys_retrieval_search_seconds_count\{[^}]*mode="exact"/);
    expect(metrics).toContain(`recsys_retrieval_index_items{state="live"} ${info.size}`);
    expect(metrics).toContain(`recsys_retrieval_index_info{version="${info.version}",origin="rebuild"} 1`);
    expect(metrics).toMatch(/recsys_retrieval_rebuild_seconds_count \d/);
  });

  it("restarts from its saved index plus the logged ops, unless the artifacts are newer", async () => {
    const query = { case: "embedding" as const, value: { values: row(queries, 30, DIM) } };
    await client.upsertItems({ items: [{ itemId: "after-snapshot", category: "cat-4", embedding: row(queries, 30, DIM) }] });
    const gone = ids(await client.search({ query: { case: "embedding", value: { values: row(queries, 31, DIM) } }, k: 1, exact: true }))[0]!;
    await client.deleteItems({ itemIds: [gone] });
    const before = await client.indexInfo({});
    await server.shutdown();

    ({ server, client } = await startRetrieval(env));
    const reloaded = await client.indexInfo({});
    expect(reloaded).toMatchObject({ version: before.version, size: before.size, origin: "file" });
    expect(ids(await client.search({ query, k: 1 }))).toEqual(["after-snapshot"]);
    expect(await failure(client.search({ query: { case: "itemId", value: gone }, k: 1 }))).toMatchObject({ code: Code.NotFound });
    await server.shutdown();

    // A new training run: the artifacts win, and the ops on the old index go with it.
    const later = new Date(Date.now() + 60_000);
    utimesSync(join(env.MODELS_DIR, "embeddings", "v1", "items.f32"), later, later);
    ({ server, client } = await startRetrieval(env));
    expect(await client.indexInfo({})).toMatchObject({ size: 2000n, origin: "artifacts" });
    expect(await failure(client.search({ query: { case: "itemId", value: "after-snapshot" }, k: 1 }))).toMatchObject({ code: Code.NotFound });
  });
});

describe("retrieval service without usable artifacts", () => {
  it("stays NOT_SERVING and answers UNAVAILABLE, and says why it cannot start", async () => {
    const dir = tempDir("broken");
    const catalogueFiles = syntheticCatalogue({ items: 10, users: 2, dim: 8, clusters: 2, categories: 2 });
    writeModels(join(dir, "models"), catalogueFiles);
    writeFileSync(join(dir, "models", "embeddings", "v1", "item_ids.txt"), "only-one-id\n");
    const server = await startRetrievalService({ GRPC_PORT: "0", LOG_LEVEL: "silent", MODELS_DIR: join(dir, "models"), RETRIEVAL_DATA_DIR: join(dir, "data"), REDIS_URL: "redis://127.0.0.1:9" });
    try {
      await expect(server.ready).rejects.toThrow(/items\.f32: 320 bytes, expected 1 ids x 8 dims x 4/);
      const address = `127.0.0.1:${server.port}`;
      const health = await createServiceClient(Health, address).check({ service: "" });
      expect(health.status).toBe(HealthCheckResponse_ServingStatus.NOT_SERVING);
      const err = await failure(createServiceClient(RetrievalService, address).indexInfo({}));
      expect([err.code, reason(err)]).toEqual([Code.Unavailable, "INDEX_NOT_READY"]);
    } finally {
      await server.shutdown();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
