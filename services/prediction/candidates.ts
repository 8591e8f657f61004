import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { CandidateSource, PopularKind, type Candidate, type GetCandidatesRequestSchema, type GetCandidatesResponse, type RetrievalService } from "../../gen/recsys/retrieval/v1/retrieval_pb.js";
import type { Logger } from "../kit/index.js";
import type { UserRequest } from "./context.js";
import { batchedCallRequests } from "./metrics.js";
import type { RankCandidate } from "./ranking.js";
import { TurnBatcher } from "./turn-batcher.js";

export interface CandidateReaderOptions {
  /** Candidates asked for per request, unless the answer needs more (at most 1000). */
  k: number;
  /** The service version, for metrics. */
  version: string;
  log?: Logger;
  /** Milliseconds since the epoch (default Date.now); tests move it. */
  now?: () => number;
}

const notConfigured = () => new Error("no retrieval service configured (RETRIEVAL_ADDR)");

/** Requests per GetCandidatesBatch call (its limit). */
const CANDIDATE_BATCH = 64;

/**
 * How long requests go one per call after retrieval answered GetCandidatesBatch with
 * UNIMPLEMENTED (an older retrieval, during a rollout); then the batch call is tried again.
 */
export const BATCH_UNSUPPORTED_MS = 60_000;

/** The most retrieval returns in one call (GetCandidates' and GetPopular's k). */
const MAX_K = 1000;

const SOURCE_NAMES: Record<CandidateSource, string> = {
  [CandidateSource.UNSPECIFIED]: "unknown",
  [CandidateSource.ANN]: "ann",
  [CandidateSource.EXACT]: "ann",
  [CandidateSource.POPULAR]: "popular",
  [CandidateSource.TRENDING]: "trending",
  [CandidateSource.ITEM_TO_ITEM]: "item_to_item",
};

const SOURCES = Object.keys(SOURCE_NAMES).map(Number) as CandidateSource[];

/** The names of the sources set in a CandidateColumns source mask. */
function sourceNames(mask: number): string[] {
  const names: string[] = [];
  for (const source of SOURCES) if (mask & (1 << source) && !names.includes(SOURCE_NAMES[source])) names.push(SOURCE_NAMES[source]);
  return names;
}

/** Reads the retrieval service: a user's merged candidates, and the popular lists when none are held locally. */
export class CandidateReader {
  /** The candidate requests of one event-loop turn share a GetCandidatesBatch call (turn-batcher.ts). */
  private readonly batches: TurnBatcher<MessageInitShape<typeof GetCandidatesRequestSchema>, GetCandidatesResponse> | undefined;
  /** Until when requests go one GetCandidates call each: retrieval said it has no GetCandidatesBatch. */
  private singlesUntil = 0;
  /** After a refusal, one request at a time asks with the batch call whether retrieval serves it now. */
  private probing = false;
  private readonly now: () => number;

  constructor(
    private readonly client: Client<typeof RetrievalService> | undefined,
    private readonly options: CandidateReaderOptions,
  ) {
    this.now = options.now ?? Date.now;
    if (client) {
      const callSizes = batchedCallRequests.labels({ version: options.version, call: "candidates" });
      this.batches = new TurnBatcher(
        async (requests, timeoutMs) => (await client.getCandidatesBatch({ requests }, { timeoutMs })).responses,
        CANDIDATE_BATCH,
        (requests) => callSizes.observe(requests),
      );
    }
  }

  /** False without RETRIEVAL_ADDR: every read then throws. */
  get configured(): boolean {
    return this.client !== undefined;
  }

  /** Retrieval's merged candidates for the user, `atLeast` of them when that is more than k. Throws when retrieval cannot answer. */
  async forUser(request: UserRequest, atLeast: number, timeoutMs: number): Promise<RankCandidate[]> {
    if (!this.batches) throw notConfigured();
    const k = Math.min(MAX_K, Math.max(this.options.k, atLeast));
    const response = await this.read({ userId: request.userId, k, context: request.context, columnar: true }, timeoutMs);
    const columns = response.columns;
    if (!columns) return response.candidates.map((c) => ({ itemId: c.itemId, category: c.category, sources: c.sources.map((s) => SOURCE_NAMES[s.source]) }));
    return columns.itemIds.map((itemId, i) => ({
      itemId,
      category: columns.categoryNames[columns.categoryIndex[i] ?? -1] ?? "",
      sources: sourceNames(columns.sourceMasks[i] ?? 0),
    }));
  }

  /**
   * The request's share of a GetCandidatesBatch call, or a GetCandidates call of its own
   * while retrieval does not serve the batch call: in a rollout that upgrades prediction
   * before retrieval, each request keeps its candidates (and its own failures) instead
   * of falling to the popular rung.
   */
  private async read(request: MessageInitShape<typeof GetCandidatesRequestSchema>, timeoutMs: number): Promise<GetCandidatesResponse> {
    const client = this.need();
    if (this.now() < this.singlesUntil || this.probing) return client.getCandidates(request, { timeoutMs });
    // The first request after a refusal is the probe; the others keep to single calls until it is answered.
    const probe = this.singlesUntil > 0;
    this.probing = probe;
    const started = performance.now();
    try {
      const response = await this.batches!.load(request, timeoutMs);
      if (probe) {
        this.singlesUntil = 0;
        this.options.log?.info("retrieval serves GetCandidatesBatch again: requests share batch calls");
      }
      return response;
    } catch (err) {
      if (ConnectError.from(err).code !== Code.Unimplemented) throw err;
      // Calls sent before the first refusal came back are refused too: one warning.
      if (this.now() >= this.singlesUntil && !probe) {
        this.options.log?.warn({ retryInMs: BATCH_UNSUPPORTED_MS }, "retrieval does not serve GetCandidatesBatch (an older version?): one GetCandidates call per request for now");
      }
      this.singlesUntil = this.now() + BATCH_UNSUPPORTED_MS;
      return client.getCandidates(request, { timeoutMs: Math.max(1, Math.floor(timeoutMs - (performance.now() - started))) });
    } finally {
      if (probe) this.probing = false;
    }
  }

  /** The popular list of a category (all items when empty), best first. Throws when retrieval cannot answer. */
  async popular(category: string, k: number, timeoutMs: number): Promise<Candidate[]> {
    const response = await this.need().getPopular({ category, k: Math.min(MAX_K, k), kind: PopularKind.POPULAR }, { timeoutMs });
    return response.candidates;
  }

  private need(): Client<typeof RetrievalService> {
    if (!this.client) throw notConfigured();
    return this.client;
  }
}
