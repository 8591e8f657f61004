// `npm run bench -- models`: the INT8 (dynamically quantised) neural ranker against
// its FP32 source in onnxruntime-node, on the same fixed validation rows
// (models/parity/v1/bench_features.f32): throughput per batch size on one thread,
// and how closely the INT8 scores and orderings follow the FP32 ones. The Python
// side of the same comparison is training/bench_quant.py.
// Knobs: MODELS_BENCH_SECONDS (per scenario, default 3), MODELS_BENCH_BATCHES (default 1,200,2000).
import { join } from "node:path";
import { ROOT } from "../scripts/lib/tools.js";
import { OnnxModel } from "../services/prediction/models.js";
import { rankerBenchRows, ratio, summarize, type BenchSuite, type Ratio, type ScenarioResult } from "./harness.js";

const seconds = Number(process.env.MODELS_BENCH_SECONDS ?? 3);
const batches = (process.env.MODELS_BENCH_BATCHES ?? "1,200,2000").split(",").map(Number);
const WIDTH = 14;

/** Scores back to back on this thread for `seconds`, cycling through the rows in batches of `size`. */
async function throughput(model: OnnxModel, rows: Float32Array, size: number): Promise<ScenarioResult> {
  const total = rows.length / WIDTH;
  const batchesOf = Array.from({ length: Math.max(1, Math.floor(total / size)) }, (_, i) => rows.subarray(i * size * WIDTH, (i + 1) * size * WIDTH));
  for (const batch of batchesOf.slice(0, 5)) await model.score(batch, size);
  const latencies: number[] = [];
  const started = performance.now();
  for (let i = 0; performance.now() - started < seconds * 1000; i++) {
    const t = performance.now();
    await model.score(batchesOf[i % batchesOf.length]!, size);
    latencies.push(performance.now() - t);
  }
  const elapsed = performance.now() - started;
  return summarize(`${model.name}, batch ${size}`, latencies, elapsed, 0, { rows_per_s: Math.round((latencies.length * size * 1000) / elapsed), batch: size });
}

/** Spearman rank correlation (no ties expected in float scores). */
function spearman(a: Float32Array, b: Float32Array): number {
  const ranks = (x: Float32Array) => {
    const order = Array.from(x.keys()).sort((i, j) => x[i]! - x[j]!);
    const r = new Float64Array(x.length);
    order.forEach((index, rank) => (r[index] = rank));
    return r;
  };
  const [ra, rb] = [ranks(a), ranks(b)];
  const n = a.length;
  let d2 = 0;
  for (let i = 0; i < n; i++) d2 += (ra[i]! - rb[i]!) ** 2;
  return 1 - (6 * d2) / (n * (n * n - 1));
}

/** Share of the FP32 top 10 that the INT8 model also puts in its top 10, averaged over lists of 200 rows (a Predict's candidates). */
function top10Overlap(a: Float32Array, b: Float32Array): number {
  const top = (x: Float32Array, from: number) =>
    new Set(
      Array.from({ length: 200 }, (_, i) => from + i)
        .sort((i, j) => x[j]! - x[i]!)
        .slice(0, 10),
    );
  let sum = 0;
  let lists = 0;
  for (let from = 0; from + 200 <= a.length; from += 200, lists++) {
    const [ta, tb] = [top(a, from), top(b, from)];
    sum += [...ta].filter((i) => tb.has(i)).length / 10;
  }
  return sum / lists;
}

const suite: BenchSuite = {
  name: "models",
  async run() {
    const rows = rankerBenchRows();
    const n = rows.length / WIDTH;
    const fp32 = await OnnxModel.load(join(ROOT, "models", "ranker-mlp", "v1"));
    const int8 = await OnnxModel.load(join(ROOT, "models", "ranker-mlp-int8", "v1"));
    try {
      const scenarios: ScenarioResult[] = [];
      const ratios: Ratio[] = [];
      for (const size of batches) {
        const base = await throughput(fp32, rows, size);
        const quantised = await throughput(int8, rows, size);
        scenarios.push(base, quantised);
        const speedup = (quantised.rows_per_s as number) / (base.rows_per_s as number);
        ratios.push(ratio(`INT8 / FP32 MLP rows per second, batch ${size}`, speedup, "informational (> 1 is a speed-up)", true));
      }
      const [a, b] = [await fp32.score(rows, n), await int8.score(rows, n)];
      let maxDiff = 0;
      let sumDiff = 0;
      for (let i = 0; i < n; i++) {
        const d = Math.abs(a[i]! - b[i]!);
        maxDiff = Math.max(maxDiff, d);
        sumDiff += d;
      }
      ratios.push(
        ratio(`INT8 vs FP32 max |score difference| (${n} rows)`, maxDiff, "informational", true),
        ratio(`INT8 vs FP32 mean |score difference| (${n} rows)`, sumDiff / n, "informational", true),
        ratio("INT8 vs FP32 Spearman rank correlation", spearman(a, b), ">= 0.99", spearman(a, b) >= 0.99),
        ratio("INT8 vs FP32 top-10 overlap in lists of 200", top10Overlap(a, b), ">= 0.9", top10Overlap(a, b) >= 0.9),
      );
      return { scenarios, ratios };
    } finally {
      await Promise.all([fp32.release(), int8.release()]);
    }
  },
};
export default suite;
