import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Gauge } from "prom-client";
import { registry } from "../kit/index.js";

/*
 * Model staleness: how old the data behind each serving model is (now minus its
 * manifest's created_at, which training sets to the last event of its log: the
 * training cut-off, not the time the job ran), and how long ago the service loaded
 * it. Both are computed when Prometheus scrapes, from an injectable clock.
 */

/** A serving model and its training cut-off (ms since the epoch; undefined: its manifest states none). */
export interface AgedModel {
  name: string;
  version: string;
  cutoffMs: number | undefined;
}

/** The training cut-off a manifest states (created_at), or undefined. */
export function manifestCutoffMs(manifest: unknown): number | undefined {
  const createdAt = (manifest as { created_at?: unknown } | undefined)?.created_at;
  if (typeof createdAt !== "string") return undefined;
  const ms = Date.parse(createdAt);
  return Number.isFinite(ms) ? ms : undefined;
}

/** The shape of a model set model-age reads: its rankers' manifests and the embeddings' directory. */
export interface AgedSet {
  rankers: ReadonlyMap<string, { name: string; version: string; model: { manifest: unknown } }>;
  embeddings: { dir: string };
  versions: Record<string, string>;
}

/** Every model of a set with its cut-off: the rankers, and the embeddings (their manifest read from disk). */
export function agedModels(set: AgedSet): AgedModel[] {
  const rankers = [...set.rankers.values()].map((r) => ({ name: r.name, version: r.version, cutoffMs: manifestCutoffMs(r.model.manifest) }));
  const manifestPath = join(set.embeddings.dir, "manifest.json");
  const embeddings = existsSync(manifestPath) ? manifestCutoffMs(JSON.parse(readFileSync(manifestPath, "utf8"))) : undefined;
  return [...rankers, { name: "embeddings", version: set.versions.embeddings ?? "", cutoffMs: embeddings }];
}

export interface ModelAgesOptions {
  /** SERVICE_VERSION, for metric labels. */
  serviceVersion: string;
  /** The oldest training cut-off a serving model may have; 0 exports no maximum (and the alert stays quiet). */
  maxAgeSeconds: number;
  now?: () => number;
}

interface Loaded extends AgedModel {
  loadedAtMs: number;
}

const live = new Set<ModelAges>();
const labelNames = ["version", "model", "model_version"] as const;

/** One gauge per figure, each filled from every live tracker at scrape time. */
function ageGauge(name: string, help: string, value: (ages: ModelAges, model: Loaded) => number | undefined) {
  return new Gauge({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      this.reset();
      for (const ages of live) {
        for (const model of ages.models()) {
          const v = value(ages, model);
          if (v !== undefined) this.set({ version: ages.serviceVersion, model: model.name, model_version: model.version }, v);
        }
      }
    },
  });
}

export const modelAgeSeconds = ageGauge(
  "recsys_prediction_model_age_seconds",
  "Seconds since the training cut-off (manifest created_at: the last event of the training log) of each serving model.",
  (ages, model) => (model.cutoffMs === undefined ? undefined : (ages.now() - model.cutoffMs) / 1000),
);

export const modelSinceLoadSeconds = ageGauge(
  "recsys_prediction_model_since_load_seconds",
  "Seconds since the service loaded each serving model.",
  (ages, model) => (ages.now() - model.loadedAtMs) / 1000,
);

export const modelMaxAgeSeconds = ageGauge(
  "recsys_prediction_model_max_age_seconds",
  "The configured maximum age of a serving model's training cut-off; absent when none is configured.",
  (ages) => (ages.maxAgeSeconds > 0 ? ages.maxAgeSeconds : undefined),
);

/** The models serving now, when each was loaded, exported as age gauges. */
export class ModelAges {
  readonly serviceVersion: string;
  readonly maxAgeSeconds: number;
  readonly now: () => number;
  private readonly serving = new Map<string, Loaded>();

  constructor(options: ModelAgesOptions) {
    this.serviceVersion = options.serviceVersion;
    this.maxAgeSeconds = options.maxAgeSeconds;
    this.now = options.now ?? Date.now;
    live.add(this);
  }

  /** These models serve from now on, loaded now; those of the previous set are no longer reported. */
  loaded(models: AgedModel[]): void {
    const at = this.now();
    this.serving.clear();
    for (const model of models) this.serving.set(model.name, { ...model, loadedAtMs: at });
  }

  models(): Loaded[] {
    return [...this.serving.values()];
  }

  close(): void {
    live.delete(this);
  }
}
