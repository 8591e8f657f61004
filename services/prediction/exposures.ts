// Exposure logging: when Predict serves a variant, the experiment service should count
// the user as exposed. Recording must never cost Predict anything: record() only
// appends to a bounded in-memory queue and returns; batches leave in the background
// through the experiment service's RecordExposures, one call at a time. When the queue
// is full (the experiment service is slow or away), new exposures are dropped and
// counted, never waited for. Every exposure carries its own id, so a batch resent after
// a failure is deduplicated by the experiment service.
import { randomUUID } from "node:crypto";
import { timestampNow, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { Counter, Gauge } from "prom-client";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import type { ExperimentService } from "../../gen/recsys/experiment/v1/experiment_pb.js";
import { Code, ConnectError, registry, type Logger } from "../kit/index.js";

export interface Exposure {
  experimentId: string;
  variant: string;
  userId: string;
}

export interface ExposureRecorderOptions {
  client: Client<typeof ExperimentService>;
  /** Exposures held while waiting to be sent; beyond this, new ones are dropped. */
  maxQueued: number;
  /** Exposures per RecordExposures call (the RPC takes at most 10,000). */
  batchSize: number;
  /** A partial batch waits at most this long for company. */
  flushIntervalMs: number;
  /** Deadline of one RecordExposures call. */
  callTimeoutMs: number;
  /** Sends of one batch before it is given up (dropped, counted). */
  maxAttempts: number;
  log: Logger;
}

const exposuresRecorded = new Counter({
  name: "recsys_prediction_exposures_total",
  help: "Exposures of served variants sent to the experiment service, by result: recorded (new there), duplicate (a resend it already had).",
  labelNames: ["result"] as const,
  registers: [registry],
});
const exposuresDropped = new Counter({
  name: "recsys_prediction_exposures_dropped_total",
  help: "Exposures given up, by reason: queue_full (the experiment service falls behind), send_failed (every attempt failed), refused (unknown experiment or variant).",
  labelNames: ["reason"] as const,
  registers: [registry],
});
const exposuresQueued = new Gauge({
  name: "recsys_prediction_exposures_queued",
  help: "Exposures waiting to be sent to the experiment service.",
  registers: [registry],
});

type Queued = Exposure & { exposureId: string; timestamp: Timestamp };

/** exposures[i] named by a refusal's field ("exposures[3].variant"), if it names one. */
function refusedIndex(err: ConnectError): number | undefined {
  const field = err.findDetails(ErrorInfoSchema)[0]?.metadata.field ?? "";
  const match = /^exposures\[(\d+)\]/.exec(field);
  return match ? Number(match[1]) : undefined;
}

/** Refusals that a resend cannot fix. */
const permanent = new Set([Code.InvalidArgument, Code.PermissionDenied, Code.Unauthenticated, Code.Unimplemented, Code.NotFound]);

export class ExposureRecorder {
  private queue: Queued[] = [];
  private timer: NodeJS.Timeout | undefined;
  private sending: Promise<void> | undefined;
  private closed = false;

  constructor(private readonly options: ExposureRecorderOptions) {}

  /** Queues an exposure for sending; drops it (counted) when the queue is full. Never throws, never waits. */
  record(exposure: Exposure): void {
    if (this.closed || !exposure.experimentId) return;
    if (this.queue.length >= this.options.maxQueued) {
      exposuresDropped.inc({ reason: "queue_full" });
      return;
    }
    this.queue.push({ ...exposure, exposureId: randomUUID(), timestamp: timestampNow() });
    exposuresQueued.set(this.queue.length);
    if (this.queue.length >= this.options.batchSize) this.schedule(0);
    else this.schedule(this.options.flushIntervalMs);
  }

  /** Sends everything queued now; resolves when the queue is empty (sent or given up). */
  async flush(): Promise<void> {
    while (this.queue.length > 0 || this.sending) {
      clearTimeout(this.timer);
      this.timer = undefined;
      await (this.sending ?? this.send());
    }
  }

  /** Stops taking exposures and sends what is queued, within the given time. */
  async close(timeoutMs: number): Promise<void> {
    this.closed = true;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.flush(), new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
    clearTimeout(timer);
    clearTimeout(this.timer);
  }

  /** One send at a time: the next is scheduled when this one ends, if anything is left. */
  private schedule(delayMs: number): void {
    if (this.sending) return;
    if (this.timer && delayMs > 0) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.send();
    }, delayMs);
    this.timer.unref();
  }

  private send(): Promise<void> {
    const batch = this.queue.splice(0, this.options.batchSize);
    exposuresQueued.set(this.queue.length);
    this.sending = this.sendBatch(batch).finally(() => {
      this.sending = undefined;
      if (this.queue.length > 0) this.schedule(this.queue.length >= this.options.batchSize ? 0 : this.options.flushIntervalMs);
    });
    return this.sending;
  }

  private async sendBatch(batch: Queued[]): Promise<void> {
    const { client, callTimeoutMs, maxAttempts, log } = this.options;
    for (let attempt = 1; batch.length > 0; ) {
      try {
        const { recorded, duplicates } = await client.recordExposures({ exposures: batch }, { timeoutMs: callTimeoutMs });
        exposuresRecorded.inc({ result: "recorded" }, recorded);
        exposuresRecorded.inc({ result: "duplicate" }, duplicates);
        return;
      } catch (err) {
        const error = ConnectError.from(err);
        const refused = error.code === Code.InvalidArgument ? refusedIndex(error) : undefined;
        // The request is all or none: drop the exposure it names and send the rest again.
        if (refused !== undefined && refused < batch.length) {
          const [bad] = batch.splice(refused, 1);
          exposuresDropped.inc({ reason: "refused" });
          log.debug({ experimentId: bad!.experimentId, variant: bad!.variant, err: error.rawMessage }, "exposure refused by the experiment service");
          continue;
        }
        if (permanent.has(error.code) || attempt >= maxAttempts) {
          exposuresDropped.inc({ reason: permanent.has(error.code) ? "refused" : "send_failed" }, batch.length);
          log.warn({ exposures: batch.length, attempts: attempt, code: Code[error.code], err: error.rawMessage }, "exposures dropped: the experiment service did not take them");
          return;
        }
        attempt++;
        await new Promise((resolve) => setTimeout(resolve, Math.min(100 * 2 ** attempt, 2_000)).unref());
      }
    }
  }
}
