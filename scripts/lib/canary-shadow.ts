// The canary's own calls through the edge, each pinned to a version with the x-canary
// header: a warm-up replay of the hottest users to v2 (so its L1 holds what v1's
// does before it takes traffic), and paired shadow calls, the same request to v1 and
// to v2 with the cache bypassed, whose rankings are compared.
import { ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { FallbackLevel, PredictionService, type PredictResponse } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { jaccard, rankBiasedOverlap, scoreDrift } from "../../services/prediction/rank-agreement.js";

export type Version = "v1" | "v2";

/** One pinned call: who answered (the edge may fail over to the other version) and with what. */
type Answer = { version: string; response: PredictResponse } | { error: string };

export interface ShadowPair {
  userId: string;
  /** Jaccard overlap of the two top-10 lists. */
  overlap: number;
  rbo: number;
  /** Mean |score difference| over the items both lists hold (null: none in common). */
  drift: number | null;
}

/** Why a pair was not compared: a call failed, the other version answered, or an answer came from a fallback rung. */
export type Unpaired = { skipped: string };

export class CanaryProbe {
  private readonly client: Client<typeof PredictionService>;

  constructor(
    edge: string,
    private readonly token: string,
    private readonly timeoutMs = 5000,
  ) {
    this.client = createClient(PredictionService, createGrpcTransport({ baseUrl: `http://${edge}` }));
  }

  private async call(userId: string, version: Version, bypassCache: boolean): Promise<Answer> {
    let answeredBy = "none";
    try {
      const response = await this.client.predict(
        { userId, numPredictions: 10, bypassCache },
        { headers: { authorization: `Bearer ${this.token}`, "x-canary": version }, timeoutMs: this.timeoutMs, onHeader: (h) => (answeredBy = h.get("x-service-version") ?? "none") },
      );
      return { version: answeredBy, response };
    } catch (err) {
      return { error: ConnectError.from(err).message };
    }
  }

  /**
   * Replays `users` to v2 as callers would (cache on), `concurrency` at a time, so v2's
   * caches hold the hot users before it takes a share. Returns how many v2 answered.
   */
  async warm(users: string[], concurrency: number): Promise<{ calls: number; answeredByV2: number }> {
    let next = 0;
    let answeredByV2 = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < users.length) {
          const answer = await this.call(users[next++]!, "v2", false);
          if ("version" in answer && answer.version === "v2") answeredByV2++;
        }
      }),
    );
    return { calls: users.length, answeredByV2 };
  }

  /** The same request to v1 and v2, cache bypassed, at once; compared when each version answered its own from its primary rung. */
  async pair(userId: string): Promise<ShadowPair | Unpaired> {
    const [a, b] = await Promise.all([this.call(userId, "v1", true), this.call(userId, "v2", true)]);
    for (const [answer, version] of [[a, "v1"], [b, "v2"]] as const) {
      if ("error" in answer) return { skipped: `${version} call failed: ${answer.error}` };
      if (answer.version !== version) return { skipped: `${version} call answered by ${answer.version}` };
      if (answer.response.metadata?.fallbackLevel !== FallbackLevel.PRIMARY) return { skipped: `${version} answered from rung ${FallbackLevel[answer.response.metadata?.fallbackLevel ?? 0]}` };
    }
    const [one, two] = [(a as { response: PredictResponse }).response.predictions, (b as { response: PredictResponse }).response.predictions];
    const ids = (list: typeof one) => list.map((i) => i.itemId);
    return { userId, overlap: jaccard(ids(one), ids(two)), rbo: rankBiasedOverlap(ids(one), ids(two)), drift: scoreDrift(one, two) };
  }
}

/** Users for shadow pairs: spread over the whole activity list (hot and tail alike), in a fixed order. */
export function shadowSample(usersByActivity: string[], count: number): string[] {
  const n = usersByActivity.length;
  return Array.from({ length: Math.min(count, n) }, (_, i) => usersByActivity[(i * 7919) % n]!);
}
