import { Priority } from "../../gen/recsys/common/v1/common_pb.js";

export type Admitted = { admitted: true; waitedMs: number; release: () => void };
export type Shed = { admitted: false; waitedMs: number };

interface Waiter {
  priority: Priority;
  enqueuedAt: number;
  resolve: (outcome: Admitted | Shed) => void;
  timer?: NodeJS.Timeout;
}

/** Lanes served highest first. */
const LANES = [Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW] as const;

/** LOW and NORMAL give way under overload; HIGH and CRITICAL always queue. */
const sheddable = (priority: Priority) => priority === Priority.LOW || priority === Priority.NORMAL;

/**
 * Admission for expensive computations: at most `maxConcurrent` run at once, the
 * rest wait in priority lanes (CRITICAL, HIGH, NORMAL, LOW; unspecified counts as
 * NORMAL). When the queueing delay (the age of the oldest waiter) passes
 * `shedDelayMs`, LOW and NORMAL arrivals are shed at once, and LOW or NORMAL
 * waiters are shed once they have waited that long, so HIGH and CRITICAL keep the
 * capacity and their latency holds.
 */
export class Admission {
  private running = 0;
  private readonly lanes = new Map<Priority, Waiter[]>(LANES.map((p) => [p, []]));

  constructor(
    private readonly maxConcurrent: number,
    private readonly shedDelayMs: number,
  ) {}

  /** Age of the oldest waiter in milliseconds; 0 when nobody waits. */
  queueDelayMs(now = performance.now()): number {
    let oldest = now;
    for (const lane of this.lanes.values()) if (lane[0] && lane[0].enqueuedAt < oldest) oldest = lane[0].enqueuedAt;
    return now - oldest;
  }

  acquire(requested: Priority): Promise<Admitted | Shed> {
    const priority = requested === Priority.UNSPECIFIED ? Priority.NORMAL : requested;
    if (this.running < this.maxConcurrent && this.waiting() === 0) return Promise.resolve(this.admit(0));
    if (sheddable(priority) && this.queueDelayMs() > this.shedDelayMs) return Promise.resolve({ admitted: false, waitedMs: 0 });
    return new Promise((resolve) => {
      const waiter: Waiter = { priority, enqueuedAt: performance.now(), resolve };
      if (sheddable(priority)) {
        waiter.timer = setTimeout(() => {
          const lane = this.lanes.get(priority)!;
          lane.splice(lane.indexOf(waiter), 1);
          resolve({ admitted: false, waitedMs: performance.now() - waiter.enqueuedAt });
        }, this.shedDelayMs);
      }
      this.lanes.get(priority)!.push(waiter);
    });
  }

  private waiting(): number {
    let n = 0;
    for (const lane of this.lanes.values()) n += lane.length;
    return n;
  }

  private admit(waitedMs: number): Admitted {
    this.running++;
    let released = false;
    return {
      admitted: true,
      waitedMs,
      release: () => {
        if (released) return;
        released = true;
        this.running--;
        this.next();
      },
    };
  }

  private next(): void {
    for (const priority of LANES) {
      const waiter = this.lanes.get(priority)!.shift();
      if (!waiter) continue;
      clearTimeout(waiter.timer);
      waiter.resolve(this.admit(performance.now() - waiter.enqueuedAt));
      return;
    }
  }
}
