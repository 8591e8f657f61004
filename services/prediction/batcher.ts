/** Runs one batch: `rows` rows of `width` floats, row-major; one score per row, and how long the run itself took. */
export type BatchRunner = (features: Float32Array, rows: number) => Promise<{ scores: Float32Array; runMs: number }>;

export interface BatcherOptions {
  /** Floats per row. */
  width: number;
  /** Upper bound of rows per run; the adaptive limit moves below it. */
  maxRows: number;
  /** Upper bound of how long a request waits for a second run slot while a run is in flight. */
  maxWaitMs: number;
  /** The p99 of a request's time in the batcher (queueing + run) the limits adapt to. */
  p99TargetMs: number;
  /** Runs in flight at once. */
  maxInFlight: number;
  /** Requests per p99 window. */
  windowSize?: number;
  /** Milliseconds on a monotonic clock (default performance.now); tests move it. */
  now?: () => number;
}

export interface BatchStats {
  rows: number;
  requests: number;
  runMs: number;
  /** The adaptive limits after this batch. */
  maxRows: number;
  maxWaitMs: number;
}

interface Pending {
  features: Float32Array;
  rows: number;
  enqueuedAt: number;
  resolve: (scores: Float32Array) => void;
  reject: (err: unknown) => void;
}

/**
 * Smallest adaptive row cap: a few requests of the service's usual 200 candidates
 * still merge. Below it a slow run says the machine is busy, not that batches are
 * too large, and smaller batches would only cost throughput.
 */
const MIN_ROWS = 1024;

/**
 * Dynamic micro-batching of model runs across concurrent requests. An idle model
 * runs a request at once (no fixed delay). While runs are in flight, requests
 * accumulate and go out together when a run slot frees or the batch is full; with
 * more than one slot, a request that waited the max wait takes a free slot.
 *
 * Both limits adapt to the p99 target. The row cap follows the run time (additive
 * increase, multiplicative decrease, as in Clipper): a run may take at most half the
 * target, because it delays everything queued behind it; a slower merged run cuts
 * the cap by a quarter (down to a floor), a full batch that ran in under a quarter
 * of the target raises it by an eighth. Queueing from overload is not a reason to
 * shrink batches (that would lower throughput when it is needed most). The max wait follows the requests' p99
 * over a window: halved above the target, doubled back below half of it.
 */
export class MicroBatcher {
  private readonly queue: Pending[] = [];
  private queuedRows = 0;
  private inFlight = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly window: number[] = [];
  private readonly windowSize: number;
  private readonly now: () => number;
  /** Current adaptive limits. */
  maxRows: number;
  maxWaitMs: number;

  constructor(
    private readonly run: BatchRunner,
    private readonly options: BatcherOptions,
    private readonly onBatch: (stats: BatchStats) => void = () => {},
  ) {
    this.maxRows = options.maxRows;
    this.maxWaitMs = options.maxWaitMs;
    this.windowSize = options.windowSize ?? 200;
    this.now = options.now ?? (() => performance.now());
  }

  /** Scores `rows` rows; resolves with this request's scores only. */
  submit(features: Float32Array, rows: number): Promise<Float32Array> {
    if (features.length !== rows * this.options.width) {
      return Promise.reject(new Error(`batcher: expected ${rows} x ${this.options.width} values, got ${features.length}`));
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ features, rows, enqueuedAt: this.now(), resolve, reject });
      this.queuedRows += rows;
      this.pump();
    });
  }

  private pump(): void {
    while (this.queue.length > 0 && this.inFlight < this.options.maxInFlight) {
      const waited = this.now() - this.queue[0]!.enqueuedAt;
      const due = this.inFlight === 0 || this.queuedRows >= this.maxRows || waited >= this.maxWaitMs;
      if (!due) {
        this.timer ??= setTimeout(() => {
          this.timer = undefined;
          this.pump();
        }, this.maxWaitMs - waited);
        return;
      }
      this.dispatch(this.takeBatch());
    }
  }

  /** The oldest requests up to the row cap (at least one, whatever its size). */
  private takeBatch(): Pending[] {
    const batch: Pending[] = [];
    let rows = 0;
    while (this.queue.length > 0 && (batch.length === 0 || rows + this.queue[0]!.rows <= this.maxRows)) {
      const next = this.queue.shift()!;
      rows += next.rows;
      batch.push(next);
    }
    this.queuedRows -= rows;
    if (this.queue.length === 0 && this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    return batch;
  }

  private dispatch(batch: Pending[]): void {
    this.inFlight++;
    const rows = batch.reduce((sum, p) => sum + p.rows, 0);
    let features: Float32Array;
    if (batch.length === 1) {
      features = batch[0]!.features;
    } else {
      features = new Float32Array(rows * this.options.width);
      let offset = 0;
      for (const p of batch) {
        features.set(p.features, offset);
        offset += p.features.length;
      }
    }
    this.run(features, rows).then(
      ({ scores, runMs }) => {
        const finished = this.now();
        let offset = 0;
        for (const p of batch) {
          p.resolve(scores.subarray(offset, offset + p.rows));
          offset += p.rows;
          this.observe(finished - p.enqueuedAt);
        }
        this.adaptRows(batch.length, rows, runMs);
        this.onBatch({ rows, requests: batch.length, runMs, maxRows: this.maxRows, maxWaitMs: this.maxWaitMs });
        this.finish();
      },
      (err: unknown) => {
        for (const p of batch) p.reject(err);
        this.finish();
      },
    );
  }

  private finish(): void {
    this.inFlight--;
    this.pump();
  }

  private adaptRows(requests: number, rows: number, runMs: number): void {
    const { p99TargetMs, maxRows } = this.options;
    // A slow run of a single request says nothing about merging: there was none.
    if (runMs > p99TargetMs / 2 && requests > 1) {
      this.maxRows = Math.max(Math.min(MIN_ROWS, maxRows), Math.floor(this.maxRows * 0.75));
    } else if (rows >= this.maxRows * 0.9 && runMs < p99TargetMs / 4) {
      this.maxRows = Math.min(maxRows, Math.ceil(this.maxRows * 1.125));
    }
  }

  private observe(latencyMs: number): void {
    this.window.push(latencyMs);
    if (this.window.length < this.windowSize) return;
    this.window.sort((a, b) => a - b);
    const p99 = this.window[Math.floor(this.window.length * 0.99)]!;
    this.window.length = 0;
    const { p99TargetMs, maxWaitMs } = this.options;
    if (p99 > p99TargetMs) this.maxWaitMs /= 2;
    else if (p99 < p99TargetMs / 2) this.maxWaitMs = Math.min(maxWaitMs, Math.max(this.maxWaitMs * 2, maxWaitMs / 16));
  }
}
