// GetCandidates' columnar answer (CandidateColumns) against its message answer, from a
// real server with popular and trending lists in a real Redis.
import { rmSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Client } from "@connectrpc/connect";
import { CandidateSource, type CandidateColumns, type RetrievalService } from "../../../gen/recsys/retrieval/v1/retrieval_pb.js";
import { startTestRedis, type TestRedisTarget } from "../../../test/support/redis-cluster.js";
import type { RetrievalServer } from "../server.js";
import { startRetrieval, tempDir } from "./helpers.js";
import { syntheticCatalogue, writeModels } from "./synthetic.js";

const catalogue = syntheticCatalogue({ items: 1200, users: 10, dim: 16, clusters: 12, categories: 6, seed: 5 });
const SOURCES = [CandidateSource.ANN, CandidateSource.EXACT, CandidateSource.POPULAR, CandidateSource.TRENDING, CandidateSource.ITEM_TO_ITEM];

/** The columns back as rows: id, category, score, sources sorted. */
function rows(columns: CandidateColumns) {
  const bytes = columns.scores;
  const scores = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  return columns.itemIds.map((itemId, i) => ({
    itemId,
    category: columns.categoryNames[columns.categoryIndex[i]!],
    score: scores[i],
    sources: SOURCES.filter((s) => columns.sourceMasks[i]! & (1 << s)).sort(),
  }));
}

describe("GetCandidates as columns", () => {
  const dir = tempDir("columns");
  let redis: TestRedisTarget;
  let server: RetrievalServer;
  let client: Client<typeof RetrievalService>;

  beforeAll(async () => {
    writeModels(join(dir, "models"), catalogue);
    redis = await startTestRedis();
    const writer = redis.client();
    await writer.zadd("recsys:popular:all", ...Array.from({ length: 30 }, (_, i) => [100 - i, `item-${400 + i}`]).flat());
    await writer.zadd("recsys:trending:all", ...Array.from({ length: 30 }, (_, i) => [50 - i, `item-${410 + i}`]).flat());
    writer.disconnect();
    ({ server, client } = await startRetrieval({ MODELS_DIR: join(dir, "models"), RETRIEVAL_DATA_DIR: join(dir, "data"), ...redis.env }));
  });
  afterAll(async () => {
    await server?.shutdown();
    await redis?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("carries the message answer's candidates, order, categories, fused scores and sources", async () => {
    const request = { userId: "user-1", k: 120, recentItemIds: ["item-2", "item-8"], popularK: 20 };
    const messages = await client.getCandidates(request);
    const columnar = await client.getCandidates({ ...request, columnar: true });
    expect(columnar.candidates).toEqual([]);
    expect(columnar.indexVersion).toBe(messages.indexVersion);
    expect(columnar.personalized).toBe(true);
    const got = rows(columnar.columns!);
    const want = messages.candidates.map((c) => ({ itemId: c.itemId, category: c.category, score: c.score, sources: c.sources.map((s) => s.source).sort() }));
    expect(got.map(({ score: _, ...rest }) => rest)).toEqual(want.map(({ score: _, ...rest }) => rest));
    got.forEach((row, i) => expect(row.score).toBeCloseTo(want[i]!.score, 6));
    // Every source took part, so each bit of the mask was exercised.
    expect(new Set(got.flatMap((row) => row.sources))).toEqual(new Set([CandidateSource.ANN, CandidateSource.POPULAR, CandidateSource.TRENDING, CandidateSource.ITEM_TO_ITEM]));
  });

  it("answers an empty column set when nothing matches", async () => {
    const columnar = await client.getCandidates({ userId: "nobody", k: 10, popularK: 5, filter: { includeCategories: ["no-such-category"] }, columnar: true });
    expect(columnar.columns?.itemIds ?? []).toEqual([]);
    expect(columnar.personalized).toBe(false);
  });
});
