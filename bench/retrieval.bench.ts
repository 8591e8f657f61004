// HNSW retrieval over clustered embeddings (1M x 64 by default): build time and
// memory, then recall@100 against exact search and single-thread QPS at several ef
// values, next to two exact baselines measured in the same run: the service's own
// exact scan and hnswlib's C++ brute force. Everything runs in process through the
// service's ItemIndex, so the figures are the index's, not gRPC's.
//
// Quick run: RETRIEVAL_BENCH_ITEMS=100000 npm run bench -- retrieval
// Knobs: RETRIEVAL_BENCH_ITEMS, _DIM, _M, _EF_CONSTRUCTION, _EFS (comma list), _QUERIES, _SECONDS (per ef).
import hnswlib from "hnswlib-node";
import { ItemIndex, type SearchFilter } from "../services/retrieval/item-index.js";
import { clusteredSpace } from "../services/retrieval/test/synthetic.js";
import { ratio, summarize, type BenchSuite, type ScenarioResult } from "./harness.js";

const env = (name: string, fallback: number) => Number(process.env[`RETRIEVAL_BENCH_${name}`] ?? fallback);
const K = 100;
const CATEGORIES = 10;
const TARGET_RECALL = 0.95;
const TARGET_SPEEDUP = 20;

const noFilter: SearchFilter = { includeCategories: [], excludeCategories: [], excludeItemIds: [] };
const oneCategory: SearchFilter = { includeCategories: ["cat-3"], excludeCategories: [], excludeItemIds: [] };

const mib = (bytes: number) => Math.round(bytes / 2 ** 20);

/** Runs search over the queries round robin for at least `seconds`; latencies of every call. */
function timeQueries(queries: Float32Array[], seconds: number, search: (query: Float32Array) => unknown): { latencies: number[]; elapsedMs: number } {
  const latencies: number[] = [];
  const started = performance.now();
  const until = started + seconds * 1000;
  for (let i = 0; latencies.length < queries.length || performance.now() < until; i++) {
    const t = performance.now();
    search(queries[i % queries.length]!);
    latencies.push(performance.now() - t);
  }
  return { latencies, elapsedMs: performance.now() - started };
}

function recallAt(found: string[][], truth: string[][]): number {
  let hits = 0;
  let total = 0;
  found.forEach((ids, q) => {
    const expected = new Set(truth[q]);
    hits += ids.filter((id) => expected.has(id)).length;
    total += expected.size;
  });
  return Math.round((hits / total) * 10_000) / 10_000;
}

const suite: BenchSuite = {
  name: "retrieval",
  async run() {
    const items = env("ITEMS", 1_000_000);
    const dim = env("DIM", 64);
    const params = { m: env("M", 16), efConstruction: env("EF_CONSTRUCTION", 100), efSearch: 100 };
    const efs = (process.env.RETRIEVAL_BENCH_EFS ?? "100,150,200,400").split(",").map(Number);
    const queryCount = env("QUERIES", 200);
    const seconds = env("SECONDS", 2);
    console.log(`retrieval bench: ${items} x ${dim}, M=${params.m}, efConstruction=${params.efConstruction}, ${queryCount} queries, k=${K}`);

    const space = clusteredSpace({ dim, clusters: Math.max(10, Math.round(items / 1000)), seed: 42 });
    const ids = Array.from({ length: items }, (_, i) => `item-${i}`);
    const categories = ids.map((_, i) => `cat-${i % CATEGORIES}`);
    const vectors = space.sample(items);
    const queries = Array.from({ length: queryCount }, () => space.sample(1));

    const rssBefore = process.memoryUsage().rss;
    const buildStarted = performance.now();
    const index = await ItemIndex.build({ ids, categories, vectors }, dim, params, { version: "bench", origin: "artifacts" });
    const buildMs = performance.now() - buildStarted;
    const rssAfter = process.memoryUsage().rss;
    console.log(`built in ${(buildMs / 1000).toFixed(1)} s, rss +${mib(rssAfter - rssBefore)} MiB`);
    const scenarios: ScenarioResult[] = [
      {
        ...summarize("build hnsw (qps = inserts/s)", [], buildMs, 0),
        qps: Math.round(items / (buildMs / 1000)),
        build_s: Math.round(buildMs / 100) / 10,
        rss_increase_mib: mib(rssAfter - rssBefore),
        items,
        dim,
        m: params.m,
        ef_construction: params.efConstruction,
      },
    ];

    // Ground truth and the first exact baseline: the service's own scan.
    const truth = queries.map((query) => index.search(query, K, { exact: true }).map((h) => h.itemId));
    const filteredTruth = queries.map((query) => index.search(query, K, { exact: true, filter: oneCategory }).map((h) => h.itemId));
    const exactScan = timeQueries(queries, seconds, (query) => index.search(query, K, { exact: true }));
    scenarios.push(summarize("exact scan (service, JS)", exactScan.latencies, exactScan.elapsedMs, 0, { recall_at_100: 1 }));

    // The second: hnswlib's brute force in C++, the fastest exact search we have.
    const bruteForce = new hnswlib.BruteforceSearch("ip", dim);
    bruteForce.initIndex(items);
    for (let i = 0; i < items; i++) bruteForce.addPoint(Array.from(vectors.subarray(i * dim, (i + 1) * dim)), i);
    const bruteForceRun = timeQueries(queries, seconds, (query) => bruteForce.searchKnn(Array.from(query), K));
    const bruteForceFound = queries.map((query) => bruteForce.searchKnn(Array.from(query), K).neighbors.map((label) => ids[label]!));
    scenarios.push(summarize("exact brute force (hnswlib, C++)", bruteForceRun.latencies, bruteForceRun.elapsedMs, 0, { recall_at_100: recallAt(bruteForceFound, truth) }));
    const exactQps = Math.max(scenarios[1]!.qps, scenarios[2]!.qps);

    for (const ef of efs) {
      const found = queries.map((query) => index.search(query, K, { ef }).map((h) => h.itemId));
      const run = timeQueries(queries, seconds, (query) => index.search(query, K, { ef }));
      const result = summarize(`hnsw ef=${ef}`, run.latencies, run.elapsedMs, 0, { ef, recall_at_100: recallAt(found, truth) });
      scenarios.push(result);
    }
    const filteredEf = efs.includes(200) ? 200 : efs.at(-1)!;
    const filteredFound = queries.map((query) => index.search(query, K, { ef: filteredEf, filter: oneCategory }).map((h) => h.itemId));
    const filteredRun = timeQueries(queries, seconds, (query) => index.search(query, K, { ef: filteredEf, filter: oneCategory }));
    scenarios.push(
      summarize(`hnsw ef=${filteredEf}, filter: 1 of ${CATEGORIES} categories`, filteredRun.latencies, filteredRun.elapsedMs, 0, {
        ef: filteredEf,
        recall_at_100: recallAt(filteredFound, filteredTruth),
      }),
    );

    console.log(
      [
        `\n${items.toLocaleString("en")} x ${dim}, M=${params.m}, efConstruction=${params.efConstruction}: built in ${scenarios[0]!.build_s} s, RSS +${scenarios[0]!.rss_increase_mib} MiB`,
        "| search | recall@100 | QPS (1 thread) | p50 ms | p99 ms | vs fastest exact |",
        "|---|---|---|---|---|---|",
        ...scenarios.slice(1).map((s) => `| ${s.name} | ${String(s.recall_at_100)} | ${s.qps} | ${s.p50_ms} | ${s.p99_ms} | ${Math.round((s.qps / exactQps) * 10) / 10}x |`),
      ].join("\n"),
    );
    const hnsw = scenarios.filter((s) => s.name.startsWith("hnsw ef=") && !s.name.includes("filter"));
    const best = hnsw.find((s) => (s.recall_at_100 as number) >= TARGET_RECALL);
    const ratios = [
      ratio(
        best ? `HNSW QPS at recall@100 >= ${TARGET_RECALL} (ef=${String(best.ef)}) / fastest exact QPS` : `no ef reached recall@100 >= ${TARGET_RECALL}`,
        best ? best.qps / exactQps : 0,
        `>= ${TARGET_SPEEDUP}`,
        best !== undefined && best.qps / exactQps >= TARGET_SPEEDUP,
      ),
    ];
    return { scenarios, ratios };
  },
};
export default suite;
