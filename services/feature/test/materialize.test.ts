import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCommand, startProcess } from "../../../scripts/lib/processes.js";
import { ROOT } from "../../../scripts/lib/tools.js";
import { startTestRedis, type TestRedisTarget } from "../../../test/support/redis-cluster.js";
import { materialize } from "../materialize.js";
import { connectRedis, type RedisClient } from "../../kit/redis.js";
import { featureScripts } from "../lua.js";
import { findView, type BatchView } from "../registry.js";
import { OnlineStore } from "../store.js";
import { eventually } from "./helpers.js";

const eventTime = new Date(Date.now() - 3_600_000).toISOString();
const userLine = (n: number) =>
  JSON.stringify({
    entity_id: `u${String(n).padStart(6, "0")}`,
    event_time: eventTime,
    values: { user_log_events: n / 10, user_ctr: 0.05, category_affinity: { c00: 0.75, c01: 0.25 } },
  });

describe("materialize: JSON lines into the online store", () => {
  const dir = mkdtempSync(join(tmpdir(), "feature-materialize-"));
  let redis: TestRedisTarget;
  let client: RedisClient;
  let raw: RedisClient;
  let store: OnlineStore;
  const userProfile = findView("user_profile") as BatchView;

  const file = (name: string, lines: string[]) => {
    const path = join(dir, name);
    writeFileSync(path, `${lines.join("\n")}\n`);
    return path;
  };
  // The command reads the Redis to use from its environment, as the server does.
  const command = (...args: string[]) => [...Object.entries(redis.env).map(([name, value]) => `${name}=${value}`), "node", "--import", "tsx", "services/feature/materialize.ts", ...args];
  const cli = (...args: string[]) => runCommand("env", command(...args), 60_000);
  const stored = async (ids: string[]) => (await store.readRows(userProfile, ids)).map((row) => row?.values.get("user_log_events")?.kind.value);

  beforeAll(async () => {
    redis = await startTestRedis();
    client = await connectRedis(redis.env, { commandTimeoutMs: 5_000, readyTimeoutMs: 5_000, scripts: featureScripts });
    raw = redis.client();
    store = new OnlineStore(client, 1, { maxEntities: 0, batchTtlMs: 1, streamTtlMs: 1, absentTtlMs: 1 });
  });

  afterAll(async () => {
    client.disconnect();
    raw.disconnect();
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("loads a file into the view its features name, with progress and a summary; a re-run resumes past it", async () => {
    const path = file("user_features.jsonl", Array.from({ length: 2_500 }, (_, i) => userLine(i + 1)));
    const run = await cli(path, "--batch-size", "1000");
    expect(run.stderr).toMatch(/progress: 100% 2,500 lines, 2,500 rows written/);
    expect(run.stdout).toMatch(/-> user_profile: 2500 lines, 2500 rows written, 0 skipped as stale \(a newer row is stored\), 0 bad rows/);
    expect(run.code).toBe(0);
    expect(await stored(["u000001", "u002500", "u002501"])).toEqual([0.1, 250, undefined]);

    const again = await materialize({ file: path, batchSize: 1000, restart: false, redis: client, popularTopK: 10, partitions: 1 });
    expect(again).toMatchObject({ target: "user_profile", resumedAfterLine: 2500, rowsWritten: 0 });
    const restarted = await materialize({ file: path, batchSize: 1000, restart: true, redis: client, popularTopK: 10, partitions: 1 });
    expect(restarted).toMatchObject({ resumedAfterLine: 0, rowsWritten: 2500, rowsStale: 0 });
    expect(await stored(["u000001", "u002500"])).toEqual([0.1, 250]);
  });

  it("loads the training pipeline's committed output as it is written (nulls mean no value)", async () => {
    for (const [name, view, id] of [
      ["user_features.jsonl", "user_profile", "u000000"],
      ["item_features.jsonl", "item_profile", "i000000"],
    ] as const) {
      const committed = join(ROOT, "models", "features", "v1", name);
      // Replayed as of now (as npm start does), or the 7-day TTL would drop every row at once.
      const lines = readFileSync(committed, "utf8").trim().split("\n");
      const path = file(name, lines.map((line) => JSON.stringify({ ...JSON.parse(line), event_time: eventTime })));
      const summary = await materialize({ file: path, batchSize: 1000, restart: true, redis: client, popularTopK: 10, partitions: 1 });
      expect(summary).toMatchObject({ target: view, rowsWritten: lines.length, errors: [] });
      const expected = JSON.parse(lines[0]!).values as Record<string, unknown>;
      const [row] = await store.readRows(findView(view) as BatchView, [id]);
      for (const [feature, value] of Object.entries(expected)) {
        const stored = row!.values.get(feature)?.kind.value;
        if (value === null) expect(stored, feature).toBeUndefined();
        else if (typeof value === "object") expect((stored as { values: unknown }).values, feature).toEqual(value);
        else expect(typeof stored === "bigint" ? Number(stored) : stored, feature).toEqual(value);
      }
    }
  });

  it("rejects bad rows by line number and writes nothing of their batch", async () => {
    const lines = Array.from({ length: 3_000 }, (_, i) => userLine(10_000 + i + 1));
    lines[1_499] = lines[1_499]!.replace('"user_ctr":0.05', '"user_ctr":"high"');
    lines[1_500] = JSON.stringify({ entity_id: "u011501", event_time: eventTime, values: { clicks_1m: 3 } });
    lines[2_000] = "{not json";
    const path = file("bad.jsonl", lines);
    const run = await cli(path, "--view", "user_profile", "--batch-size", "1000");
    expect(run.code).toBe(1);
    expect(run.stdout).toMatch(/line 1500: values\.user_ctr: expected double, got "high"/);
    expect(run.stdout).toMatch(/line 1501: values\.clicks_1m: view user_profile declares no such feature/);
    expect(run.stdout).toMatch(/line 2001: not valid JSON/);
    expect(run.stdout).toMatch(/1000 rows written, 0 skipped as stale \(a newer row is stored\), 3 bad rows in 2 rejected batches/);
    // Batch 1 (lines 1-1000) written; batches 2 and 3 (1001-3000) rejected whole.
    expect(await stored(["u011000", "u011001", "u011499", "u012001", "u013000"])).toEqual([1100, undefined, undefined, undefined, undefined]);

    const rerun = await materialize({ file: path, view: "user_profile", batchSize: 1000, restart: false, redis: client, popularTopK: 10, partitions: 1 });
    expect(rerun).toMatchObject({ resumedAfterLine: 1000, badBatches: 2 });
  });

  it("resumes after a crash from the last committed line", async () => {
    const path = file("big.jsonl", Array.from({ length: 100_000 }, (_, i) => userLine(200_000 + i)));
    for (const key of await redis.keys("recsys:materialize:checkpoint:*")) await raw.del(key);
    const proc = await startProcess("env", command(path, "--batch-size", "500"));
    const checkpoint = await eventually(async () => {
      const [key] = await redis.keys("recsys:materialize:checkpoint:*");
      const line = Number(key ? await raw.get(key) : 0);
      expect(line).toBeGreaterThan(0);
      return line;
    }, 120_000); // node --import tsx takes seconds to start, many on a crowded machine
    await proc.stop("SIGKILL");
    expect(checkpoint).toBeLessThan(100_000);

    const resumed = await materialize({ file: path, batchSize: 5_000, restart: false, redis: client, popularTopK: 10, partitions: 1 });
    expect(resumed.resumedAfterLine).toBeGreaterThanOrEqual(checkpoint);
    expect(resumed.rowsWritten).toBe(100_000 - resumed.resumedAfterLine);
    expect(await stored(["u200000", "u299999"])).toEqual([20_000, 29_999.9]);
  }, 240_000);

  it("seeds the popular lists from the catalogue, all or nothing", async () => {
    const items = [
      { item_id: "cat-a", category: "books", popularity: 10 },
      { item_id: "cat-b", category: "books", popularity: 40 },
      { item_id: "cat-c", category: "games", popularity: 20 },
    ].map((item) => JSON.stringify({ ...item, created_at: "2024-01-01T00:00:00Z" }));
    const seeded = await materialize({ file: file("items.jsonl", items), batchSize: 1000, restart: false, redis: client, popularTopK: 2, partitions: 1 });
    expect(seeded).toMatchObject({ target: "catalog", errors: [], lists: 3, rowsWritten: 5 });
    expect(await raw.zrevrange("recsys:popular:books", 0, -1)).toEqual(["cat-b", "cat-a"]);
    expect(await raw.zrevrange("recsys:popular:all", 0, -1)).toEqual(["cat-b", "cat-c"]);
    expect(Number(await raw.zscore("recsys:popular:books", "cat-b"))).toBeLessThan(1);

    const bad = await materialize({ file: file("bad-items.jsonl", [items[0]!, '{"item_id":"x","category":"all","popularity":1}']), batchSize: 1000, restart: false, redis: client, popularTopK: 2, partitions: 1 });
    expect(bad.errors).toEqual([{ line: 2, message: expect.stringMatching(/^category:/) }]);
    expect(await raw.zrevrange("recsys:popular:books", 0, -1)).toEqual(["cat-b", "cat-a"]);
  });
});
