import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "../kit/index.js";
import { ModelLoadError, modelVersions } from "./models.js";
import { readCatalog, readEmbeddings, type CatalogItem, type EmbeddingArtifacts } from "../kit/artifacts.js";
import { MicroBatcher } from "./batcher.js";
import { FeatureDrift } from "./drift.js";
import { assertComputable, type ModelFacts } from "./features.js";
import { WorkerModel } from "./inference.js";
import { batchRequests, batchRows, batcherLimits, modelSeconds, modelsLoaded } from "./metrics.js";
import { ModelAges, agedModels } from "./model-age.js";
import { registerOfflineFigures } from "./online-accuracy.js";

export interface Ranker {
  name: string;
  version: string;
  model: WorkerModel;
  batcher: MicroBatcher;
}

export interface Catalog {
  version: string;
  byId: Map<string, CatalogItem>;
  /** The most popular items, best first: the static-defaults rung. */
  popular: CatalogItem[];
  /** Every category of the catalogue, sorted. */
  categories: string[];
}

export interface ModelStoreOptions {
  modelsDir: string;
  threads: number;
  batch: { maxRows: number; maxWaitMs: number; p99TargetMs: number; maxInFlight: number };
  /** SERVICE_VERSION, for metric labels. */
  serviceVersion: string;
  /** MODEL_MAX_AGE_S: the oldest training cut-off a serving model may have (0: none). */
  maxModelAgeSeconds: number;
  /** DRIFT_SAMPLE_RATE and DRIFT_WINDOW_ROWS (default: drift.ts's). */
  drift?: { sampleRate: number; windowRows: number };
  log: Logger;
}

const EMBEDDINGS = "embeddings";
const CATALOG = "catalog";
const STATIC_DEFAULTS = 200;
/** The generator's default feature window, for manifests that do not state theirs. */
const DEFAULT_FEATURE_WINDOW_DAYS = 18;

/**
 * One consistent generation of everything the ranking uses: the ONNX rankers (each
 * behind its own micro-batcher), the embeddings and the catalogue. Requests hold a
 * set while they use it; a retired set frees its ONNX sessions only once the last
 * of them has finished, so a swap never cuts a run short.
 */
export class ModelSet {
  private inFlight = 0;
  private retiring: Promise<void> | undefined;
  private freed: (() => void) | undefined;
  /** Model versions by name ("ranker-gbdt" -> "v1", "embeddings" -> "v1"). */
  readonly versions: Record<string, string>;
  /** Part of the prediction cache key: answers of one generation never serve another. */
  readonly key: string;

  constructor(
    readonly rankers: Map<string, Ranker>,
    readonly embeddings: EmbeddingArtifacts,
    readonly catalog: Catalog,
    /** The rankers' common input columns, in order. */
    readonly featureNames: string[],
    readonly facts: ModelFacts,
    /** The version of every model directory it was loaded from, catalogue included. */
    readonly plan: Record<string, string>,
    /** The sampled window of this set's ranker rows, against each ranker's training distribution. */
    readonly drift: FeatureDrift,
  ) {
    this.versions = { ...Object.fromEntries([...rankers.values()].map((r) => [r.name, r.version])), [EMBEDDINGS]: plan[EMBEDDINGS]! };
    this.key = Object.entries(this.versions)
      .map(([name, version]) => `${name}@${version}`)
      .sort()
      .join("+");
  }

  /** Marks the set in use; call the returned function when done. */
  use(): () => void {
    this.inFlight++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.inFlight--;
      if (this.retiring && this.inFlight === 0) this.free();
    };
  }

  /** Frees the sessions once no request uses the set any more; resolves when they are freed. */
  retire(): Promise<void> {
    this.retiring ??= new Promise<void>((resolve) => {
      this.freed = resolve;
      if (this.inFlight === 0) this.free();
    });
    return this.retiring;
  }

  private free(): void {
    this.drift.close();
    Promise.all([...this.rankers.values()].map((r) => r.model.release())).finally(() => this.freed?.());
  }
}

function rankerNames(modelsDir: string): string[] {
  if (!existsSync(modelsDir)) return [];
  return readdirSync(modelsDir, { withFileTypes: true })
    .filter((e) => e.isDirectory() && e.name.startsWith("ranker-") && modelVersions(modelsDir, e.name).length > 0)
    .map((e) => e.name)
    .sort();
}

/** Version directories of a model that hold what the loader reads, oldest first. */
function versionsOf(modelsDir: string, name: string): string[] {
  if (name !== CATALOG) return modelVersions(modelsDir, name);
  const root = join(modelsDir, name);
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .filter((v) => existsSync(join(root, v, "items.jsonl")))
    .sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
}

/** The version of `name` to load: the pinned one when it exists, else the newest. */
function pick(modelsDir: string, name: string, pin: string | undefined): string {
  const versions = versionsOf(modelsDir, name);
  if (pin && versions.includes(pin)) return pin;
  const latest = versions.at(-1);
  if (!latest) throw new ModelLoadError(name, `no version under ${join(modelsDir, name)}`);
  return latest;
}

/** Which version of each model a set for `pin` ("" = newest of everything) holds. */
function plannedVersions(modelsDir: string, pin = ""): Record<string, string> {
  const plan: Record<string, string> = {};
  for (const name of rankerNames(modelsDir)) plan[name] = pick(modelsDir, name, pin || undefined);
  plan[EMBEDDINGS] = pick(modelsDir, EMBEDDINGS, pin || undefined);
  plan[CATALOG] = pick(modelsDir, CATALOG, pin || undefined);
  return plan;
}

/** Rows that exercise the graph: zeros, ones and a ramp, at the sizes requests use. */
function warmupRows(width: number, rows: number): Float32Array {
  const data = new Float32Array(rows * width);
  for (let i = 0; i < data.length; i++) data[i] = ((i * 7919) % 101) / 100;
  return data;
}

/**
 * Loads and owns model sets: the newest generation serves by default; a variant may
 * pin a version (loaded on first use, served by the newest until ready). reload()
 * loads and warms the newest generation off the request path, switches to it, then
 * retires the old one.
 */
export class ModelStore {
  private current!: ModelSet;
  /** Sets pinned by variants, by version; "current" when the pin is what serves anyway. */
  private readonly pinned = new Map<string, ModelSet | "loading" | "current">();
  private watcher: NodeJS.Timeout | undefined;
  private reloading: Promise<ModelSet> | undefined;
  private readonly ages: ModelAges;

  constructor(private readonly options: ModelStoreOptions) {
    this.ages = new ModelAges({ serviceVersion: options.serviceVersion, maxAgeSeconds: options.maxModelAgeSeconds });
  }

  async open(): Promise<ModelSet> {
    this.current = await this.load(plannedVersions(this.options.modelsDir));
    this.publish(this.current);
    return this.current;
  }

  get serving(): ModelSet {
    return this.current;
  }

  /** The set for a variant's model version: pinned when loaded, else the newest (and the pin starts loading). */
  forVersion(version: string): ModelSet {
    if (!version) return this.current;
    const pinned = this.pinned.get(version);
    if (pinned instanceof ModelSet) return pinned;
    if (pinned === undefined) this.pin(version);
    return this.current;
  }

  private pin(version: string): void {
    const plan = plannedVersions(this.options.modelsDir, version);
    if (JSON.stringify(plan) === JSON.stringify(this.current.plan)) {
      this.pinned.set(version, "current");
      return;
    }
    this.pinned.set(version, "loading");
    this.load(plan).then(
      (set) => this.pinned.set(version, set),
      (err: unknown) => {
        this.pinned.delete(version);
        this.options.log.warn({ err: String(err), version }, "cannot load the pinned model version; serving the newest");
      },
    );
  }

  /**
   * Swaps in the newest generation when anything changed on disk. The new set is
   * loaded and warmed before it serves; a load failure keeps the old set serving.
   */
  reload(): Promise<ModelSet> {
    this.reloading ??= (async () => {
      try {
        const plan = plannedVersions(this.options.modelsDir);
        if (JSON.stringify(plan) === JSON.stringify(this.current.plan)) return this.current;
        const next = await this.load(plan);
        const previous = this.current;
        this.current = next;
        for (const [version, pinned] of this.pinned) if (pinned === "current") this.pinned.delete(version);
        this.publish(next, previous);
        this.options.log.info({ from: previous.versions, to: next.versions }, "models swapped");
        void previous.retire();
        return next;
      } finally {
        this.reloading = undefined;
      }
    })();
    return this.reloading;
  }

  /** Polls MODELS_DIR for newer versions. */
  watch(intervalMs: number): void {
    if (intervalMs <= 0) return;
    this.watcher = setInterval(() => {
      this.reload().catch((err: unknown) => this.options.log.warn({ err: String(err) }, "model reload failed; the current models keep serving"));
    }, intervalMs);
    this.watcher.unref();
  }

  async close(): Promise<void> {
    clearInterval(this.watcher);
    await this.reloading?.catch(() => undefined);
    const sets = [this.current, ...[...this.pinned.values()].filter((s): s is ModelSet => s instanceof ModelSet)];
    await Promise.all(sets.map((s) => s.retire()));
    this.ages.close();
  }

  private publish(next: ModelSet, previous?: ModelSet): void {
    const version = this.options.serviceVersion;
    if (previous) for (const [model, v] of Object.entries(previous.versions)) modelsLoaded.set({ version, model, model_version: v }, 0);
    for (const [model, v] of Object.entries(next.versions)) modelsLoaded.set({ version, model, model_version: v }, 1);
    this.ages.loaded(agedModels(next));
  }

  private async load(plan: Record<string, string>): Promise<ModelSet> {
    const { modelsDir, threads, batch, serviceVersion: version } = this.options;
    const rankers = new Map<string, Ranker>();
    let featureNames: string[] | undefined;
    try {
      for (const [name, modelVersion] of Object.entries(plan)) {
        if (!name.startsWith("ranker-")) continue;
        const model = await WorkerModel.load(join(modelsDir, name, modelVersion), threads);
        const features = model.manifest.features ?? [];
        rankers.set(name, {
          name,
          version: modelVersion,
          model,
          batcher: new MicroBatcher((rows, n) => model.score(rows, n), { width: model.featureCount, ...batch }, (stats) => {
            modelSeconds.observe({ version, model: name }, stats.runMs / 1000);
            batchRows.observe({ version, model: name }, stats.rows);
            batchRequests.observe({ version, model: name }, stats.requests);
            batcherLimits.set({ version, model: name, limit: "max_rows" }, stats.maxRows);
            batcherLimits.set({ version, model: name, limit: "max_wait_ms" }, stats.maxWaitMs);
          }),
        });
        if (features.length === 0) throw new ModelLoadError(model.id, "the manifest lists no features");
        assertComputable(model.id, features);
        registerOfflineFigures(name, modelVersion, (model.manifest as { metrics?: unknown }).metrics);
        if (featureNames && featureNames.join() !== features.join()) {
          throw new ModelLoadError(model.id, `its features [${features.join(", ")}] differ from the other rankers' [${featureNames.join(", ")}]`);
        }
        featureNames = features;
      }
      if (!featureNames) throw new ModelLoadError("rankers", `no ranker-* model under ${modelsDir}`);
      const embeddings = await readEmbeddings(join(modelsDir, EMBEDDINGS, plan[EMBEDDINGS]!));
      const items = await readCatalog(join(modelsDir, CATALOG, plan[CATALOG]!, "items.jsonl"));
      const catalog: Catalog = {
        version: plan[CATALOG]!,
        byId: new Map(items.map((item) => [item.itemId, item])),
        popular: [...items].sort((a, b) => b.popularity - a.popularity).slice(0, STATIC_DEFAULTS),
        categories: [...new Set(items.map((item) => item.category))].sort(),
      };
      for (const ranker of rankers.values()) await this.warm(ranker);
      const first = [...rankers.values()][0]!.model.manifest as { training_data?: { split?: { feature_window_days?: number } } };
      const facts: ModelFacts = { featureWindowDays: first.training_data?.split?.feature_window_days ?? DEFAULT_FEATURE_WINDOW_DAYS };
      const models = [...rankers.values()].map((r) => ({ name: r.name, version: r.version, reference: r.model.reference }));
      return new ModelSet(rankers, embeddings, catalog, featureNames, facts, plan, new FeatureDrift({ serviceVersion: version, featureNames, models, ...this.options.drift }));
    } catch (err) {
      await Promise.all([...rankers.values()].map((r) => r.model.release()));
      throw err;
    }
  }

  /** First runs allocate ONNX Runtime's buffers; do them before any request waits on them. */
  private async warm(ranker: Ranker): Promise<void> {
    for (const rows of [1, 200, 1000, 200]) await ranker.model.score(warmupRows(ranker.model.featureCount, rows), rows);
  }
}
