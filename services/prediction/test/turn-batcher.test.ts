// The turn batcher alone, with loaders that answer at once: what goes into one call,
// how a turn's loads are split, and a call that answers the wrong number of values.
import { describe, expect, it } from "vitest";
import { Code, ConnectError } from "@connectrpc/connect";
import { TurnBatcher } from "../turn-batcher.js";

describe("turn batcher", () => {
  it("puts the loads of one turn in one call, splits a turn above the key limit, and starts a new call next turn", async () => {
    const calls: number[][] = [];
    const sizes: number[] = [];
    const batcher = new TurnBatcher<number, string>(
      async (keys) => {
        calls.push(keys);
        return keys.map((key) => `value ${key}`);
      },
      64,
      (keys) => sizes.push(keys),
    );
    const turn = Array.from({ length: 70 }, (_, i) => batcher.load(i, 1_000));
    expect(await Promise.all(turn)).toEqual(Array.from({ length: 70 }, (_, i) => `value ${i}`));
    expect(calls.map((keys) => keys.length)).toEqual([64, 6]);
    expect(await batcher.load(99, 1_000)).toBe("value 99");
    expect(calls.at(-1)).toEqual([99]);
    expect(sizes).toEqual([64, 6, 1]);
  });

  it("gives the call the longest budget of its loads", async () => {
    const budgets: number[] = [];
    const batcher = new TurnBatcher<string, string>(async (keys, timeoutMs) => {
      budgets.push(timeoutMs);
      return keys;
    }, 8);
    await Promise.all([batcher.load("a", 300), batcher.load("b", 2_000), batcher.load("c", 50)]);
    expect(budgets).toEqual([2_000]);
  });

  it("fails every load of a call that answers a different number of values (INTERNAL)", async () => {
    const batcher = new TurnBatcher<string, string>(async (keys) => keys.slice(1), 8);
    const results = await Promise.allSettled([batcher.load("a", 1_000), batcher.load("b", 1_000)]);
    for (const result of results) {
      expect(result.status).toBe("rejected");
      expect(ConnectError.from((result as PromiseRejectedResult).reason).code).toBe(Code.Internal);
    }
  });
});
