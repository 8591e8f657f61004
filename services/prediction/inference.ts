import { Worker } from "node:worker_threads";
import type { InferenceSession } from "onnxruntime-node";
import { LoadedModel, ModelLoadError, checkGraphInterface, readModelFile, sessionOptions, type ModelFile } from "./models.js";

export interface ScoredBatch {
  scores: Float32Array;
  /** Time of the ONNX run itself, measured in the worker (no queueing, no messaging). */
  runMs: number;
}

interface Ready {
  ready: true;
  inputs: InferenceSession.ValueMetadata[];
  outputs: InferenceSession.ValueMetadata[];
}
type Reply = { id: number; scores: Float32Array; runMs: number } | { id: number; error: string };
interface Waiter {
  rows: number;
  resolve: (batch: ScoredBatch) => void;
  reject: (err: Error) => void;
}

const WORKER = new URL("./inference-worker.mjs", import.meta.url);
/** A worker that died is started again after this long; meanwhile calls fail fast and the fallback ladder answers. */
const RESTART_DELAY_MS = 1000;

/**
 * A verified model (the kit's checks: manifest, sha256, graph interface) whose
 * session lives in a worker thread of its own. onnxruntime-node runs synchronously
 * on the calling thread; off the event loop, a 30 ms batch no longer stalls every
 * other request, and the rankers of one request run in parallel on separate cores.
 */
export class WorkerModel extends LoadedModel {
  private worker: Worker | undefined;
  private readonly pending = new Map<number, Waiter>();
  private nextId = 0;
  private released = false;

  private constructor(
    file: ModelFile,
    private readonly threads: number,
  ) {
    super(file);
  }

  static async load(dir: string, threads: number): Promise<WorkerModel> {
    const model = new WorkerModel(readModelFile(dir), threads);
    await model.start();
    return model;
  }

  private async start(): Promise<void> {
    const { bytes, inputName, outputName, featureCount } = this.file;
    const worker = new Worker(WORKER, {
      workerData: { bytes, options: sessionOptions(this.threads), input: inputName, output: outputName, width: featureCount },
    });
    try {
      const ready = await new Promise<Ready>((resolve, reject) => {
        worker.once("message", resolve);
        worker.once("error", (err) => reject(new ModelLoadError(this.id, `onnxruntime cannot load model.onnx: ${err.message}`)));
      });
      checkGraphInterface(this.file, ready.inputs, ready.outputs);
    } catch (err) {
      await worker.terminate();
      throw err;
    }
    let crash = "";
    worker.on("message", (reply: Reply) => this.settle(reply));
    worker.on("error", (err) => (crash = err.message));
    worker.on("exit", (code) => {
      if (this.worker !== worker) return;
      this.worker = undefined;
      for (const waiter of this.pending.values()) waiter.reject(new Error(`${this.id}: inference worker exited (${code}) ${crash}`));
      this.pending.clear();
      this.restartLater();
    });
    this.worker = worker;
  }

  private restartLater(): void {
    if (this.released) return;
    setTimeout(() => this.start().catch(() => this.restartLater()), RESTART_DELAY_MS).unref();
  }

  private settle(reply: Reply): void {
    const waiter = this.pending.get(reply.id);
    if (!waiter) return;
    this.pending.delete(reply.id);
    if ("error" in reply) waiter.reject(new Error(`${this.id}: ${reply.error}`));
    else if (reply.scores.length !== waiter.rows) waiter.reject(new Error(`${this.id}: ${reply.scores.length} scores for ${waiter.rows} rows`));
    else waiter.resolve({ scores: reply.scores, runMs: reply.runMs });
  }

  /** Scores `rows` rows laid out row-major in `features` (rows x featureCount). */
  score(features: Float32Array, rows: number): Promise<ScoredBatch> {
    if (features.length !== rows * this.featureCount) {
      return Promise.reject(new Error(`${this.id}: expected ${rows} x ${this.featureCount} values, got ${features.length}`));
    }
    const worker = this.worker;
    if (!worker) return Promise.reject(new Error(`${this.id}: ${this.released ? "released" : "inference worker restarting"}`));
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      this.pending.set(id, { rows, resolve, reject });
      worker.postMessage({ id, features, rows });
    });
  }

  async release(): Promise<void> {
    this.released = true;
    const worker = this.worker;
    this.worker = undefined;
    for (const waiter of this.pending.values()) waiter.reject(new Error(`${this.id}: released`));
    this.pending.clear();
    await worker?.terminate();
  }
}
