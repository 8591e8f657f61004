import { Gauge } from "prom-client";
import { registry } from "../kit/index.js";
import type { ModelReference } from "./models.js";

/*
 * Feature drift: how far the rows fed to the rankers have moved from the rows the
 * rankers were trained on, feature by feature.
 *
 * The statistic is the population stability index over the reference's bins
 * (models/<name>/<version>/reference.json: decile edges of the training rows) plus
 * one bin for missing (non-finite) values:
 *
 *   PSI = sum over bins k of (a_k - e_k) * ln(a_k / e_k)
 *
 * e_k = the training share of bin k, a_k = its share in the window. Both are floored
 * at PSI_EPSILON before the logarithm (and not renormalised), so a bin empty on one
 * side adds a bounded s * ln(s / 1e-4) <= 9.2 * s instead of infinity. Reading it,
 * as is customary: below 0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a
 * major one. An unshifted feature sampled N times has PSI of about (bins - 1) / N
 * from sampling alone (it is close to a chi-square statistic), 0.002 for 11 bins and
 * the default window of 5,000 rows.
 *
 * The window holds the last DRIFT_WINDOW_ROWS rows sampled at DRIFT_SAMPLE_RATE
 * (skips drawn from a geometric distribution, so the cost is per sampled row, not
 * per row), and PSI is computed when Prometheus scrapes, never on the request path.
 *
 * The hour of day (hour_sin, hour_cos) is left out: the training rows span every
 * hour, a window of minutes holds one, so it would read as a major drift all day.
 */

/** Floor of both shares in PSI's logarithm. */
export const PSI_EPSILON = 1e-4;
/** Rows kept per model set: enough that sampling noise stays far below the alert threshold. */
export const DRIFT_WINDOW_ROWS = 5000;
/** Share of the ranked rows copied into the window. */
export const DRIFT_SAMPLE_RATE = 0.02;
/** No PSI is exported before the window holds this many rows (noise would read as drift). */
export const DRIFT_MIN_ROWS = 1000;
/** Features set by the wall clock, which a window shorter than a day cannot compare with training's. */
export const CLOCK_FEATURES: ReadonlySet<string> = new Set(["hour_sin", "hour_cos"]);

/** The bin of `x` among increasing `edges`: the number of edges <= x. */
export function binOf(edges: readonly number[], x: number): number {
  let lo = 0;
  let hi = edges.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (edges[mid]! <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** PSI between two share vectors over the same bins, both floored at `epsilon`. */
export function psi(expected: readonly number[], actual: readonly number[], epsilon = PSI_EPSILON): number {
  if (expected.length !== actual.length) throw new Error(`PSI over ${expected.length} and ${actual.length} bins`);
  let sum = 0;
  for (let k = 0; k < expected.length; k++) {
    const e = Math.max(expected[k]!, epsilon);
    const a = Math.max(actual[k]!, epsilon);
    sum += (a - e) * Math.log(a / e);
  }
  return sum;
}

/** A ranker whose inputs are watched: its name, version and training distribution (none: not watched). */
export interface MonitoredModel {
  name: string;
  version: string;
  reference: ModelReference | undefined;
}

export interface FeatureDriftOptions {
  /** SERVICE_VERSION, for metric labels. */
  serviceVersion: string;
  /** The rankers' input columns, in order (every model's reference must list them so). */
  featureNames: string[];
  models: MonitoredModel[];
  windowRows?: number;
  sampleRate?: number;
  minRows?: number;
  /** Uniform [0, 1) draws for sampling; Math.random unless a test fixes them. */
  random?: () => number;
}

/** PSI of each feature of one model over the current window. */
export interface ModelDrift {
  model: string;
  modelVersion: string;
  rows: number;
  psi: Record<string, number>;
}

const live = new Set<FeatureDrift>();

const labels = ["version", "model", "model_version", "feature"] as const;

export const featurePsi = new Gauge({
  name: "recsys_prediction_feature_psi",
  help: "Population stability index of each ranker input feature over the last sampled rows against the model's training distribution (reference.json); absent until the window holds enough rows.",
  labelNames: labels,
  registers: [registry],
  collect() {
    this.reset();
    for (const drift of live) {
      for (const model of drift.drift()) {
        for (const [feature, value] of Object.entries(model.psi)) {
          this.set({ version: drift.serviceVersion, model: model.model, model_version: model.modelVersion, feature }, value);
        }
      }
    }
  },
});

export const driftWindowRows = new Gauge({
  name: "recsys_prediction_feature_drift_window_rows",
  help: "Rows in the sliding window the feature PSI is computed over, per model watched.",
  labelNames: ["version", "model", "model_version"] as const,
  registers: [registry],
  collect() {
    this.reset();
    for (const drift of live) {
      for (const model of drift.watched) this.set({ version: drift.serviceVersion, model: model.name, model_version: model.version }, drift.rows);
    }
  },
});

/**
 * The sampled sliding window of one model set's ranker rows, and its PSI against
 * each ranker's reference. Exported as metrics while open; close() when the set
 * retires.
 */
export class FeatureDrift {
  readonly serviceVersion: string;
  readonly watched: (MonitoredModel & { reference: ModelReference })[];
  private readonly width: number;
  private readonly capacity: number;
  private readonly sampleRate: number;
  private readonly minRows: number;
  private readonly random: () => number;
  private readonly window: Float32Array;
  private filled = 0;
  private next = 0;
  /** Rows still to skip before the next sampled one (carried across calls). */
  private skip: number;

  constructor(options: FeatureDriftOptions) {
    this.serviceVersion = options.serviceVersion;
    this.width = options.featureNames.length;
    this.capacity = options.windowRows ?? DRIFT_WINDOW_ROWS;
    this.sampleRate = options.sampleRate ?? DRIFT_SAMPLE_RATE;
    this.minRows = options.minRows ?? DRIFT_MIN_ROWS;
    this.random = options.random ?? Math.random;
    if (!(this.sampleRate > 0 && this.sampleRate <= 1)) throw new Error(`drift sample rate must be in (0, 1], not ${this.sampleRate}`);
    this.watched = options.models.filter((m): m is MonitoredModel & { reference: ModelReference } => m.reference !== undefined);
    for (const model of this.watched) {
      const names = model.reference.features.map((f) => f.name);
      if (names.join() !== options.featureNames.join()) throw new Error(`${model.name}@${model.version}: reference features [${names.join(", ")}] are not the rankers' columns`);
    }
    this.window = new Float32Array(this.capacity * this.width);
    this.skip = this.gap();
    if (this.watched.length > 0) live.add(this);
  }

  /** Rows in the window now. */
  get rows(): number {
    return this.filled;
  }

  /** Samples from `n` rows laid out row-major (n x features), as fed to the rankers. */
  observe(rows: Float32Array, n: number): void {
    if (this.watched.length === 0) return;
    let row = this.skip;
    for (; row < n; row += 1 + this.gap()) {
      this.window.set(rows.subarray(row * this.width, (row + 1) * this.width), this.next * this.width);
      this.next = (this.next + 1) % this.capacity;
      this.filled = Math.min(this.filled + 1, this.capacity);
    }
    this.skip = row - n;
  }

  /** PSI per feature of every watched model; empty until the window holds minRows rows. */
  drift(): ModelDrift[] {
    if (this.filled < this.minRows) return [];
    const shares = new Map<string, number[]>();
    return this.watched.map((model) => {
      const values: Record<string, number> = {};
      model.reference.features.forEach((ref, column) => {
        if (CLOCK_FEATURES.has(ref.name)) return;
        const expected = [...ref.proportions.map((p) => p * (1 - ref.missingRate)), ref.missingRate];
        const key = `${column}:${ref.edges.join()}`;
        let actual = shares.get(key);
        if (!actual) {
          actual = this.shares(column, ref.edges);
          shares.set(key, actual);
        }
        values[ref.name] = psi(expected, actual);
      });
      return { model: model.name, modelVersion: model.version, rows: this.filled, psi: values };
    });
  }

  /** Stops exporting this window's series. */
  close(): void {
    live.delete(this);
  }

  /** The window's shares of one column over `edges`' bins, then the missing bin. */
  private shares(column: number, edges: readonly number[]): number[] {
    const counts = new Array<number>(edges.length + 2).fill(0);
    for (let row = 0; row < this.filled; row++) {
      const x = this.window[row * this.width + column]!;
      counts[Number.isFinite(x) ? binOf(edges, x) : edges.length + 1]!++;
    }
    return counts.map((c) => c / this.filled);
  }

  /** Rows to skip before the next sample: geometric with the sample rate as its success probability. */
  private gap(): number {
    if (this.sampleRate >= 1) return 0;
    return Math.floor(Math.log(1 - this.random()) / Math.log(1 - this.sampleRate));
  }
}
