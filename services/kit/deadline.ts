import type { HandlerContext } from "@connectrpc/connect";

/**
 * The caller's deadline (from grpc-timeout), split into stage budgets. Each stage
 * gets min(its own cap, what is left minus a reserve for the stages after it), so
 * a short deadline makes a stage skip to a cheaper path instead of overrunning.
 */
export class Deadline {
  private readonly end: number;

  constructor(timeoutMs: number | undefined, defaultMs: number) {
    this.end = performance.now() + (timeoutMs ?? defaultMs);
  }

  static from(ctx: HandlerContext, defaultMs: number): Deadline {
    return new Deadline(ctx.timeoutMs(), defaultMs);
  }

  remainingMs(): number {
    return Math.max(0, this.end - performance.now());
  }

  /**
   * Budget for the next stage: capped, and leaving reserveMs for what follows.
   * Whole milliseconds: grpc-timeout carries an integer ("1347m"), never "1347.75m".
   */
  budgetMs(capMs: number, reserveMs = 0): number {
    return Math.max(0, Math.floor(Math.min(capMs, this.remainingMs() - reserveMs)));
  }
}
