// Multi-source candidates and popular lists, with a real Redis holding the
// feature service's popular/trending sorted sets.
import { rmSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { CandidateSource, PopularKind, RetrievalService, type Candidate } from "../../../gen/recsys/retrieval/v1/retrieval_pb.js";
import { startTestRedis, type TestRedisTarget } from "../../../test/support/redis-cluster.js";
import type { RedisClient } from "../../kit/redis.js";
import type { RetrievalServer } from "../server.js";
import { startRetrieval, tempDir } from "./helpers.js";
import { syntheticCatalogue, writeModels } from "./synthetic.js";

const catalogue = syntheticCatalogue({ items: 1500, users: 10, dim: 16, clusters: 12, categories: 6, seed: 3 });
const ids = (candidates: Candidate[]) => candidates.map((c) => c.itemId);
const sourcesOf = (candidate: Candidate | undefined) => candidate?.sources.map((s) => s.source).sort();
const metric = (metrics: string, prefix: string) =>
  metrics
    .split("\n")
    .filter((line) => line.startsWith(prefix))
    .reduce((sum, line) => sum + Number(line.split(" ").pop()), 0);

describe("candidates and popular lists with Redis", () => {
  const dir = tempDir("candidates");
  let redis: TestRedisTarget;
  let writer: RedisClient;
  let server: RetrievalServer;
  let client: Client<typeof RetrievalService>;
  const scrape = async () => (await fetch(`http://127.0.0.1:${server.metricsPort}/metrics`)).text();

  beforeAll(async () => {
    writeModels(join(dir, "models"), catalogue);
    redis = await startTestRedis();
    writer = redis.client();
    // ghost-item is in the feature service's list but not in the index: never returned.
    await writer.zadd("recsys:popular:all", 1000, "ghost-item", ...Array.from({ length: 10 }, (_, i) => [100 - i, `item-${500 + i}`]).flat());
    await writer.zadd("recsys:popular:cat-2", 5, "item-1100", 4, "item-1106", 3, "item-1112");
    // item-5 is cat-5: a list the filter must still check.
    await writer.zadd("recsys:trending:cat-4", 9, "item-5", 8, "item-10", 7, "item-4");
    await writer.zadd("recsys:trending:all", ...Array.from({ length: 5 }, (_, i) => [50 - i, `item-${700 + i}`]).flat());
    ({ server, client } = await startRetrieval({ MODELS_DIR: join(dir, "models"), RETRIEVAL_DATA_DIR: join(dir, "data"), ...redis.env, METRICS_PORT: "0", EXACT_SEARCH_BELOW: "0", POPULAR_CACHE_MS: "0" }));
  });
  afterAll(async () => {
    writer?.disconnect();
    await server?.shutdown();
    await redis?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("reads popular and trending lists from Redis, best first, without items the index lacks", async () => {
    const popular = await client.getPopular({ k: 3 });
    expect(popular.candidates.map((c) => [c.itemId, c.score, c.category])).toEqual([
      ["item-500", 100, "cat-2"],
      ["item-501", 99, "cat-3"],
      ["item-502", 98, "cat-4"],
    ]);
    expect(sourcesOf(popular.candidates[0])).toEqual([CandidateSource.POPULAR]);
    expect(ids((await client.getPopular({ k: 2, category: "cat-2" })).candidates)).toEqual(["item-1100", "item-1106"]);
    const trending = await client.getPopular({ k: 2, kind: PopularKind.TRENDING });
    expect(ids(trending.candidates)).toEqual(["item-700", "item-701"]);
    expect(sourcesOf(trending.candidates[0])).toEqual([CandidateSource.TRENDING]);

    await client.deleteItems({ itemIds: ["item-501"] });
    expect(ids((await client.getPopular({ k: 3 })).candidates)).toEqual(["item-500", "item-502", "item-503"]);
  });

  it("falls back to the catalogue's static popularity for an empty list, and counts it", async () => {
    const before = metric(await scrape(), 'recsys_retrieval_popular_fallback_total{kind="trending",reason="empty"}');
    const trending = await client.getPopular({ k: 3, category: "cat-5", kind: PopularKind.TRENDING });
    expect(ids(trending.candidates)).toEqual(["item-5", "item-11", "item-17"]);
    expect(metric(await scrape(), 'recsys_retrieval_popular_fallback_total{kind="trending",reason="empty"}')).toBe(before + 1);
  });

  it("merges ANN, item-to-item, popular and trending candidates, deduplicated, each with every source", async () => {
    const nearest = (await client.search({ query: { case: "userId", value: "user-1" }, k: 1 })).candidates[0]!.itemId;
    await writer.zadd("recsys:popular:all", 200, nearest);
    const response = await client.getCandidates({ userId: "user-1", k: 300, recentItemIds: ["item-2", "item-8", "item-3", "not-in-index"] });
    expect(response.personalized).toBe(true);
    expect(response.indexVersion).toBe((await client.indexInfo({})).version);
    const all = ids(response.candidates);
    expect(new Set(all).size).toBe(all.length);
    const bySource = (source: CandidateSource) => response.candidates.filter((c) => c.sources.some((s) => s.source === source));
    expect(bySource(CandidateSource.ANN).length).toBeGreaterThan(0);
    expect(bySource(CandidateSource.ITEM_TO_ITEM).length).toBeGreaterThan(0);
    expect(bySource(CandidateSource.POPULAR).length).toBeGreaterThan(0);
    expect(bySource(CandidateSource.TRENDING).length).toBeGreaterThan(0);
    // The recent items themselves are seeds, not neighbours of themselves.
    expect(bySource(CandidateSource.ITEM_TO_ITEM).map((c) => c.itemId)).not.toContain("item-2");
    // cat-2, the user's top recent category, brings its own popular list.
    expect(all).toEqual(expect.arrayContaining(["item-1100", "item-1106"]));
    // The item two sources agree on carries both scores and beats every single-source candidate.
    const agreed = all.indexOf(nearest);
    expect(sourcesOf(response.candidates[agreed])).toEqual([CandidateSource.ANN, CandidateSource.POPULAR]);
    expect(response.candidates[agreed]!.sources.find((s) => s.source === CandidateSource.POPULAR)!.score).toBe(200);
    expect(agreed).toBeLessThan(response.candidates.findIndex((c) => c.sources.length === 1));
    const scores = response.candidates.map((c) => c.score);
    expect(scores).toEqual([...scores].sort((a, b) => b - a));
    await writer.zrem("recsys:popular:all", nearest);
  });

  it("applies the filter to every source", async () => {
    const request = { userId: "user-2", k: 200, recentItemIds: ["item-2", "item-9"] };
    const withoutCat2 = await client.getCandidates({ ...request, filter: { excludeCategories: ["cat-2"], excludeItemIds: ["item-700"] } });
    expect(withoutCat2.candidates.length).toBeGreaterThan(50);
    expect(withoutCat2.candidates.filter((c) => c.category === "cat-2")).toEqual([]);
    expect(ids(withoutCat2.candidates)).not.toContain("item-700");

    const onlyCat4 = await client.getCandidates({ ...request, filter: { includeCategories: ["cat-4"] } });
    expect(new Set(onlyCat4.candidates.map((c) => c.category))).toEqual(new Set(["cat-4"]));
    const sources = new Set(onlyCat4.candidates.flatMap((c) => c.sources.map((s) => s.source)));
    expect(sources).toEqual(new Set([CandidateSource.ANN, CandidateSource.ITEM_TO_ITEM, CandidateSource.POPULAR, CandidateSource.TRENDING]));
    const trending = onlyCat4.candidates.filter((c) => c.sources.some((s) => s.source === CandidateSource.TRENDING));
    expect(ids(trending).sort()).toEqual(["item-10", "item-4"]);
  });

  it("answers an unknown user with popular and trending items only, not personalized", async () => {
    const response = await client.getCandidates({ userId: "someone-new", k: 20, popularK: 10 });
    expect(response.personalized).toBe(false);
    const sources = new Set(response.candidates.flatMap((c) => c.sources.map((s) => s.source)));
    expect(sources).toEqual(new Set([CandidateSource.POPULAR, CandidateSource.TRENDING]));
    // Everything in both lists the index still has (item-501 was deleted above).
    const expected = ["item-500", ...[2, 3, 4, 5, 6, 7, 8, 9].map((i) => `item-50${i}`), ...[0, 1, 2, 3, 4].map((i) => `item-70${i}`)];
    expect(ids(response.candidates).sort()).toEqual(expected.sort());
  });

  it("answers a batch as it answers each of its requests, in order; a bad request names its place in the batch", async () => {
    const requests = [
      { userId: "user-1", k: 40, recentItemIds: ["item-2"], columnar: true },
      { userId: "someone-new", k: 20, popularK: 10 },
      { userId: "user-3", k: 30, filter: { includeCategories: ["cat-4"] } },
    ];
    const batch = await client.getCandidatesBatch({ requests });
    const single = await Promise.all(requests.map((request) => client.getCandidates(request)));
    expect(batch.responses).toEqual(single);
    expect(batch.responses[0]!.columns?.itemIds).toHaveLength(40);
    expect(batch.responses[1]!.personalized).toBe(false);
    const invalid = await client.getCandidatesBatch({ requests: [requests[0]!, { userId: "", k: 10 }] }).catch((err: unknown) => ConnectError.from(err));
    expect(invalid).toBeInstanceOf(ConnectError);
    expect((invalid as ConnectError).code).toBe(Code.InvalidArgument);
    expect((invalid as ConnectError).rawMessage).toContain("requests[1].user_id");
    const tooMany = await client.getCandidatesBatch({ requests: Array.from({ length: 65 }, () => requests[1]!) }).catch((err: unknown) => ConnectError.from(err));
    expect((tooMany as ConnectError).code).toBe(Code.InvalidArgument);
    expect((tooMany as ConnectError).rawMessage).toContain("requests");
  });

  it("keeps answering from the catalogue when Redis is down, and says so in /metrics", async () => {
    const before = metric(await scrape(), 'recsys_retrieval_popular_fallback_total{kind="popular",reason="redis_unavailable"}');
    writer.disconnect();
    await redis.kill();
    const popular = await client.getPopular({ k: 3 });
    expect(ids(popular.candidates)).toEqual(["item-0", "item-1", "item-2"]);
    const candidates = await client.getCandidates({ userId: "user-1", k: 50 });
    expect(candidates.personalized).toBe(true);
    const sources = new Set(candidates.candidates.flatMap((c) => c.sources.map((s) => s.source)));
    // Trending would fall back to the same static list: it is counted once, as popular.
    expect(sources).toEqual(new Set([CandidateSource.ANN, CandidateSource.POPULAR]));
    expect(metric(await scrape(), 'recsys_retrieval_popular_fallback_total{kind="popular",reason="redis_unavailable"}')).toBeGreaterThanOrEqual(before + 2);
  });
});
