// Batch materialisation: loads a JSON lines file into the online store.
//
//   npx tsx services/feature/materialize.ts <file> [--view <name>|catalog] [--redis-url URL]
//                                          [--batch-size N] [--restart]
//
// Feature files hold one row per line, {"entity_id", "event_time" (ISO), "values"}
// (a null value means none); the view is --view, or the batch view declaring every
// feature of the first row.
// A catalogue ({"item_id","category","popularity"} per line) seeds the popular lists.
//
// Rows are written in batches, each checked whole first: a batch with a bad row
// writes nothing, and the run reports every bad line and exits 1. Writes are guarded
// by event time (a newer stored row stays), so a re-run is harmless; the last line of
// the unbroken run of written batches is kept in Redis, so a re-run of the same file
// resumes after it (--restart ignores it).
import { createHash } from "node:crypto";
import { createReadStream, statSync } from "node:fs";
import { resolve } from "node:path";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { parseCatalogLine, type CatalogItem } from "../kit/artifacts.js";
import { checkJson } from "./codec.js";
import { loadFeatureConfig } from "./config.js";
import { checkpointKey } from "./keys.js";
import { seedPopular } from "./popular.js";
import { closeRedis, connectRedis, type RedisClient } from "../kit/redis.js";
import { featureScripts } from "./lua.js";
import { views, type BatchView, type JsonFeatureValue } from "./registry.js";
import { OnlineStore, type RowWrite } from "./store.js";

const MAX_FUTURE_MS = 5 * 60_000;
const CHECKPOINT_TTL_S = 30 * 86_400;
const MAX_REPORTED_ERRORS = 20;

export interface LineError {
  line: number;
  message: string;
}

/** One feature row line, checked against the view, or what is wrong with it. */
export function parseRowLine(text: string, view: BatchView, now: number): RowWrite | { error: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return { error: "not valid JSON" };
  }
  const { entity_id, event_time, values } = (raw ?? {}) as Record<string, unknown>;
  if (typeof entity_id !== "string" || entity_id.length === 0 || entity_id.length > 257) return { error: "entity_id: expected a string of 1-257 characters" };
  const eventTimeMs = typeof event_time === "string" ? Date.parse(event_time) : NaN;
  if (Number.isNaN(eventTimeMs)) return { error: `event_time: expected an ISO 8601 time, got ${JSON.stringify(event_time)}` };
  if (eventTimeMs > now + MAX_FUTURE_MS) return { error: `event_time: ${event_time} is in the future` };
  if (typeof values !== "object" || values === null || Array.isArray(values) || Object.keys(values).length === 0) {
    return { error: "values: expected an object of feature values" };
  }
  const checked: Record<string, JsonFeatureValue> = {};
  for (const [name, value] of Object.entries(values)) {
    // null: no value (served as the default), as the training pipeline writes it.
    if (value === null) continue;
    const feature = view.features.find((f) => f.name === name);
    if (!feature) return { error: `values.${name}: view ${view.name} declares no such feature (services/feature/registry.ts)` };
    const result = checkJson(feature.type, value);
    if ("error" in result) return { error: `values.${name}: ${result.error}` };
    checked[name] = result.value;
  }
  return { view, entityId: entity_id, eventTimeMs, values: checked };
}

/** The batch view declaring every feature of a row, for files given without --view. */
export function inferView(firstLine: string): BatchView | "catalog" | undefined {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(firstLine) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  if ("item_id" in raw && "popularity" in raw) return "catalog";
  const names = Object.keys((raw.values ?? {}) as object);
  return views.find((v): v is BatchView => v.source === "batch" && names.length > 0 && names.every((n) => v.features.some((f) => f.name === n)));
}

/** Progress on stderr: a redrawn bar on a terminal, a line every 10% otherwise. */
class Progress {
  private lastDraw = 0;
  private lastDecile = -1;
  private readonly started = performance.now();

  constructor(private readonly totalBytes: number) {}

  update(bytes: number, lines: number, rows: number, final = false): void {
    const fraction = this.totalBytes > 0 ? Math.min(1, bytes / this.totalBytes) : 1;
    const rate = Math.round(rows / Math.max(0.001, (performance.now() - this.started) / 1000));
    const text = `${Math.floor(fraction * 100)}% ${lines.toLocaleString("en-US")} lines, ${rows.toLocaleString("en-US")} rows written, ${rate.toLocaleString("en-US")} rows/s`;
    if (process.stderr.isTTY) {
      if (!final && performance.now() - this.lastDraw < 100) return;
      this.lastDraw = performance.now();
      const width = 30;
      const filled = Math.round(fraction * width);
      process.stderr.write(`\r[${"#".repeat(filled)}${".".repeat(width - filled)}] ${text}\x1b[K${final ? "\n" : ""}`);
    } else {
      const decile = Math.floor(fraction * 10);
      if (decile === this.lastDecile && !final) return;
      this.lastDecile = decile;
      process.stderr.write(`progress: ${text}\n`);
    }
  }
}

export interface MaterializeOptions {
  file: string;
  view?: string;
  batchSize: number;
  restart: boolean;
  redis: RedisClient;
  /** Size of each seeded popular list. */
  popularTopK: number;
  /** PARTITIONS of the deployment (keys.ts). */
  partitions: number;
}

export interface MaterializeSummary {
  target: string;
  lines: number;
  resumedAfterLine: number;
  rowsWritten: number;
  rowsStale: number;
  badBatches: number;
  errors: LineError[];
  seconds: number;
  /** Catalogue runs: popular lists seeded (rowsWritten counts their entries). */
  lists?: number;
}

/** Identifies the file's content as it is now: a changed file starts over. */
function fileId(path: string, view: string): string {
  const { size, mtimeMs } = statSync(path);
  return createHash("sha256").update(`${resolve(path)}\0${size}\0${mtimeMs}\0${view}`).digest("hex").slice(0, 24);
}

async function* numberedLines(path: string, onBytes: (bytes: number) => void): AsyncGenerator<[number, string]> {
  const input = createReadStream(path);
  let lineNumber = 0;
  for await (const line of createInterface({ input, crlfDelay: Infinity })) {
    lineNumber++;
    onBytes(input.bytesRead);
    if (line.trim() !== "") yield [lineNumber, line];
  }
}

async function firstLine(path: string): Promise<string> {
  for await (const [, line] of numberedLines(path, () => undefined)) return line;
  throw new Error(`${path} holds no rows`);
}

export async function materialize(options: MaterializeOptions): Promise<MaterializeSummary> {
  const started = performance.now();
  const target = options.view ?? (await (async () => {
    const inferred = inferView(await firstLine(options.file));
    if (!inferred) throw new Error(`cannot tell which view ${options.file} is for; pass --view`);
    return inferred === "catalog" ? "catalog" : inferred.name;
  })());
  const progress = new Progress(statSync(options.file).size);
  let bytes = 0;
  const lines = numberedLines(options.file, (b) => (bytes = b));
  const summary: MaterializeSummary = { target, lines: 0, resumedAfterLine: 0, rowsWritten: 0, rowsStale: 0, badBatches: 0, errors: [], seconds: 0 };

  if (target === "catalog") {
    const items: CatalogItem[] = [];
    for await (const [number, line] of lines) {
      summary.lines = number;
      const item = parseCatalogLine(line);
      if ("error" in item) summary.errors.push({ line: number, message: item.error });
      else items.push(item);
      progress.update(bytes, number, 0);
    }
    // Seeds are normalised over the whole catalogue: a partial one would mislead.
    if (summary.errors.length === 0) {
      const sizes = await seedPopular(options.redis, items, options.popularTopK);
      summary.rowsWritten = [...sizes.values()].reduce((a, b) => a + b, 0);
      summary.lists = sizes.size;
    } else summary.badBatches = 1;
    progress.update(bytes, summary.lines, summary.rowsWritten, true);
    summary.seconds = (performance.now() - started) / 1000;
    return summary;
  }

  const view = views.find((v): v is BatchView => v.name === target && v.source === "batch");
  if (!view) throw new Error(`--view ${target}: not a batch view (batch views: ${views.filter((v) => v.source === "batch").map((v) => v.name).join(", ")})`);
  const store = new OnlineStore(options.redis, options.partitions, { maxEntities: 0, batchTtlMs: 1, streamTtlMs: 1, absentTtlMs: 1 });
  const checkpoint = checkpointKey(fileId(options.file, view.name));
  summary.resumedAfterLine = options.restart ? 0 : Number((await options.redis.get(checkpoint)) ?? 0);
  // The checkpoint only moves while every batch so far was written.
  let unbroken = true;
  let batch: RowWrite[] = [];
  let batchErrors: LineError[] = [];
  let batchLastLine = 0;
  const now = Date.now();

  const flush = async () => {
    if (batchErrors.length > 0) {
      summary.badBatches++;
      summary.errors.push(...batchErrors);
      unbroken = false;
    } else if (batch.length > 0) {
      const { written, stale } = await store.writeRows(batch);
      summary.rowsWritten += written;
      summary.rowsStale += stale;
      if (unbroken) await options.redis.set(checkpoint, String(batchLastLine), "EX", CHECKPOINT_TTL_S);
    }
    batch = [];
    batchErrors = [];
  };

  for await (const [number, line] of lines) {
    summary.lines = number;
    if (number <= summary.resumedAfterLine) continue;
    const row = parseRowLine(line, view, now);
    if ("error" in row) batchErrors.push({ line: number, message: row.error });
    else batch.push(row);
    batchLastLine = number;
    if (batch.length + batchErrors.length >= options.batchSize) await flush();
    progress.update(bytes, number, summary.rowsWritten);
  }
  await flush();
  progress.update(bytes, summary.lines, summary.rowsWritten, true);
  summary.seconds = (performance.now() - started) / 1000;
  return summary;
}

function report(file: string, s: MaterializeSummary): string {
  const out = [
    s.lists !== undefined
      ? `${file} -> popular lists: ${s.lines} catalogue items, ${s.lists} lists seeded with ${s.rowsWritten} entries, ${s.seconds.toFixed(1)} s`
      : `${file} -> ${s.target}: ${s.lines} lines${s.resumedAfterLine ? ` (resumed after line ${s.resumedAfterLine})` : ""}, ` +
        `${s.rowsWritten} rows written, ${s.rowsStale} skipped as stale (a newer row is stored), ` +
        `${s.errors.length} bad rows in ${s.badBatches} rejected batches, ${s.seconds.toFixed(1)} s`,
  ];
  for (const e of s.errors.slice(0, MAX_REPORTED_ERRORS)) out.push(`  line ${e.line}: ${e.message}`);
  if (s.errors.length > MAX_REPORTED_ERRORS) out.push(`  ... and ${s.errors.length - MAX_REPORTED_ERRORS} more`);
  if (s.errors.length > 0) out.push("Nothing of a rejected batch was written; fix the lines and run again (written batches are skipped or rewritten harmlessly).");
  return out.join("\n");
}

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      view: { type: "string" },
      "redis-url": { type: "string" },
      "batch-size": { type: "string", default: "1000" },
      restart: { type: "boolean", default: false },
    },
  });
  const file = positionals[0];
  const batchSize = Number(values["batch-size"]);
  if (!file || positionals.length > 1 || !Number.isInteger(batchSize) || batchSize < 1) {
    process.stderr.write("usage: materialize <file.jsonl> [--view <name>|catalog] [--redis-url URL] [--batch-size N] [--restart]\n");
    return 2;
  }
  const config = loadFeatureConfig({ ...process.env, ...(values["redis-url"] ? { REDIS_URL: values["redis-url"] } : {}) });
  let redis: RedisClient | undefined;
  try {
    redis = await connectRedis(config, { commandTimeoutMs: 10_000, readyTimeoutMs: 5_000, name: "materialize", scripts: featureScripts });
    const summary = await materialize({ file, view: values.view, batchSize, restart: values.restart, redis, popularTopK: config.POPULAR_TOP_K, partitions: config.PARTITIONS });
    process.stdout.write(`${report(file, summary)}\n`);
    return summary.errors.length > 0 ? 1 : 0;
  } catch (err) {
    process.stderr.write(`materialize: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  } finally {
    if (redis) await closeRedis(redis);
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  process.exitCode = await main();
}
