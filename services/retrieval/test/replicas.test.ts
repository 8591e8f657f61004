// Three retrieval replicas over one replicated index log (a Redis Stream): writes
// through any replica, including conflicting ones sent at once, end up applied by all
// three in the same order, so every replica returns the same candidates. A replica
// started later from a copy of a snapshot applies only the log entries after the
// snapshot's position.
import { cpSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RetrievalService } from "../../../gen/recsys/retrieval/v1/retrieval_pb.js";
import { startTestRedis, type TestRedisTarget } from "../../../test/support/redis-cluster.js";
import { eventually } from "../../feature/test/helpers.js";
import { registry } from "../../kit/index.js";
import type { RedisClient } from "../../kit/redis.js";
import { opsStreamKey } from "../ops-log.js";
import type { RetrievalServer } from "../server.js";
import { startRetrieval, tempDir } from "./helpers.js";
import { row, syntheticCatalogue, writeModels } from "./synthetic.js";

const DIM = 16;
const ADMIN_TOKEN = "test-admin-token-replicas";
const catalogue = syntheticCatalogue({ items: 1500, users: 5, dim: DIM, clusters: 10, categories: 5, seed: 11 });
const queries = catalogue.space.sample(12);
const query = (q: number) => ({ case: "embedding" as const, value: { values: row(queries, q, DIM) } });

type Replica = { server: RetrievalServer; client: Client<typeof RetrievalService>; dataDir: string };

/** Stream entries applied by the replicas of this process (they share one metrics registry). */
async function appliedOps(): Promise<number> {
  const metric = await registry.getSingleMetric("recsys_retrieval_replicated_ops_total")?.get();
  return metric?.values.reduce((sum, v) => sum + v.value, 0) ?? 0;
}

describe("retrieval replicas over a replicated index log", () => {
  const dir = tempDir("replicas");
  const modelsDir = join(dir, "models");
  let redis: TestRedisTarget;
  let raw: RedisClient;
  const replicas: Replica[] = [];

  const start = async (dataDir: string): Promise<Replica> => {
    const started = await startRetrieval({
      MODELS_DIR: modelsDir,
      RETRIEVAL_DATA_DIR: dataDir,
      ...redis.env,
      REPLICATE_INDEX_OPS: "true",
      ADMIN_TOKEN,
      // Approximate search too: the replicas must agree on the graph, not only on the rows.
      EXACT_SEARCH_BELOW: "0",
    });
    const replica = { ...started, dataDir };
    replicas.push(replica);
    return replica;
  };

  /**
   * What a replica answers: its size and the top 20 for every query, exact and (unless
   * exactOnly) approximate. Replicas built alike and fed the same ops hold the same HNSW
   * graph; one compacted on its own (RebuildIndex) holds the same items in another graph.
   */
  const answers = async ({ client }: Replica, exactOnly: boolean) => {
    const out: unknown[] = [(await client.indexInfo({})).size];
    for (let q = 0; q < queries.length / DIM; q++) {
      for (const exact of exactOnly ? [true] : [false, true]) {
        const { candidates } = await client.search({ query: query(q), k: 20, exact });
        out.push(candidates.map((c) => `${c.itemId}:${c.category}:${c.score.toFixed(5)}`));
      }
    }
    return out;
  };

  const agree = async (group: Replica[], exactOnly = false) => {
    const [first, ...rest] = await Promise.all(group.map((replica) => answers(replica, exactOnly)));
    for (const other of rest) expect(other).toEqual(first);
    return first!;
  };

  beforeAll(async () => {
    writeModels(modelsDir, catalogue);
    redis = await startTestRedis();
    raw = redis.client();
    for (let r = 0; r < 3; r++) await start(join(dir, `data-${r}`));
  });
  afterAll(async () => {
    raw?.disconnect();
    for (const { server } of replicas) await server.shutdown();
    await redis?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("apply upserts and deletes made through any replica, so all three return the same candidates", async () => {
    const [a, b, c] = replicas as [Replica, Replica, Replica];
    // Searchable on the replica that took the write as soon as it answers.
    expect(await a.client.upsertItems({ items: [{ itemId: "new-a", category: "cat-new", embedding: row(queries, 0, DIM) }] })).toMatchObject({ inserted: 1, updated: 0 });
    expect((await a.client.search({ query: query(0), k: 1, exact: true })).candidates[0]?.itemId).toBe("new-a");
    const victims = (await b.client.search({ query: query(1), k: 3, exact: true })).candidates.map((x) => x.itemId);
    expect(await c.client.deleteItems({ itemIds: victims })).toMatchObject({ deleted: 3, notFound: 0 });

    // Conflicting writes sent at once through different replicas: the log orders them, and every replica applies that order.
    await Promise.all(
      Array.from({ length: 30 }, (_, i) => {
        const via = replicas[i % 3]!;
        return i % 5 === 4
          ? via.client.deleteItems({ itemIds: [`contested-${i % 4}`] })
          : via.client.upsertItems({ items: [{ itemId: `contested-${i % 4}`, category: `cat-${i % 3}`, embedding: row(queries, 2 + (i % 7), DIM) }] });
      }),
    );

    await eventually(() => agree([a, b, c]), 30_000);
    const agreed = await agree([a, b, c]);
    const [, annTop, exactTop] = agreed as [bigint, string[], string[]];
    expect(annTop[0]).toMatch(/^new-a:cat-new:/);
    expect(exactTop[0]).toMatch(/^new-a:cat-new:/);
    const all = (agreed.slice(1) as string[][]).flat().map((entry) => entry.split(":")[0]);
    for (const victim of victims) expect(all).not.toContain(victim);
  });

  it("start a new replica from a snapshot's copy: it applies only the log after the snapshot's position, and agrees", async () => {
    const [a] = replicas as [Replica];
    await a.client.rebuildIndex({}, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    const { streamId } = JSON.parse(readFileSync(join(a.dataDir, "v1", "CURRENT"), "utf8")) as { streamId: string };
    expect(streamId).toMatch(/^\d+-\d+$/);
    await a.client.upsertItems({ items: [{ itemId: "after-snapshot", category: "cat-late", embedding: row(queries, 10, DIM) }] });
    await replicas[1]!.client.deleteItems({ itemIds: ["new-a"] });
    await eventually(() => agree(replicas, true), 30_000);
    const behindSnapshot = await raw.xrange(opsStreamKey("v1"), `(${streamId}`, "+");
    expect(behindSnapshot.length).toBeGreaterThanOrEqual(2);

    const copyDir = join(dir, "data-copy");
    cpSync(a.dataDir, copyDir, { recursive: true });
    const appliedBefore = await appliedOps();
    const late = await start(copyDir);
    // Nothing else is written meanwhile: what was applied now, the new replica applied, and it is only what the snapshot lacks.
    expect((await appliedOps()) - appliedBefore).toBe(behindSnapshot.length);
    await eventually(() => agree(replicas, true), 30_000);
    const { candidates } = await late.client.search({ query: query(10), k: 1, exact: true });
    expect(candidates.map((x) => x.itemId)).toEqual(["after-snapshot"]);
    expect((await late.client.search({ query: query(0), k: 5, exact: true })).candidates.map((x) => x.itemId)).not.toContain("new-a");
  });
});
