import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { LRUCache } from "lru-cache";
import type { RequestContext } from "../../gen/recsys/common/v1/common_pb.js";
import type { ExperimentService, VariantConfig } from "../../gen/recsys/experiment/v1/experiment_pb.js";
import { createAssigner, type Assigner, type AssignerConfig } from "../experiment/assigner.js";
import { invalidArgument, type Logger } from "../kit/index.js";
import { DEFAULT_VARIANT, changesRanking, fromExperiment, type ExplicitVariant, type Variant } from "./variants.js";

export interface Resolved {
  variant: Variant;
  /** Set when assignment could not be asked and the default variant stands in. */
  degraded?: string;
}

interface Assignment {
  experimentId: string;
  variant: string;
  config?: VariantConfig;
}

/** Who asks, and for which variant. */
export interface VariantRequest {
  userId: string;
  context: RequestContext | undefined;
  explicit: ExplicitVariant | undefined;
  /** The field an unknown explicit variant is reported on. */
  variantField: string;
}

const ASSIGNER_RETRY_MS = 5_000;

/**
 * Decides the variant of a request. Assignment runs in-process on the experiment
 * service's cached definitions (the assigner library: no RPC per request); until
 * that is connected it asks the Assign RPC within a small budget, with answers
 * cached briefly. Any failure falls back to the default variant: assignment never
 * fails a prediction. Only an explicit variant that does not exist is an error.
 */
export class VariantResolver {
  private assigner: Assigner | undefined;
  private onConnected: (() => void)[] = [];
  private retry: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly rpcAnswers = new LRUCache<string, Assignment[]>({ max: 20_000, ttl: 10_000 });

  constructor(
    private readonly client: Client<typeof ExperimentService> | undefined,
    private readonly assignerConfig: AssignerConfig,
    private readonly log: Logger,
  ) {}

  /** Connects the in-process assigner, retrying in the background while Redis is unreachable. */
  start(): void {
    createAssigner(this.assignerConfig, this.log).then(
      (assigner) => {
        if (this.closed) return void assigner.close();
        this.assigner = assigner;
        for (const resolve of this.onConnected.splice(0)) resolve();
        this.log.info("experiment assignment in-process");
      },
      (err: Error) => {
        if (!this.retry) this.log.warn({ err: err.message }, "in-process experiment assigner unavailable; using the Assign RPC until it connects");
        if (!this.closed) this.retry = setTimeout(() => this.start(), ASSIGNER_RETRY_MS).unref();
      },
    );
  }

  /** Resolves true once assignment runs in-process, false after timeoutMs; never throws. */
  connected(timeoutMs: number): Promise<boolean> {
    if (this.assigner) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.onConnected = this.onConnected.filter((f) => f !== done);
        resolve(false);
      }, timeoutMs);
      this.onConnected.push(done);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retry);
    await this.assigner?.close();
  }

  async resolve(request: VariantRequest, timeoutMs: number): Promise<Resolved> {
    const { userId, context, explicit } = request;
    if (explicit && "builtIn" in explicit) return { variant: explicit.builtIn };
    const forced = explicit ? { [explicit.experimentId]: explicit.variant } : {};
    let assignments: Assignment[];
    try {
      assignments = await this.assignments(userId, context, forced, timeoutMs);
    } catch (err) {
      const connectErr = ConnectError.from(err);
      if (explicit && connectErr.code === Code.InvalidArgument) {
        throw invalidArgument(request.variantField, `no variant "${explicit.variant}" in a draft or running experiment "${explicit.experimentId}"`);
      }
      return { variant: DEFAULT_VARIANT, degraded: `experiment assignment unavailable (${connectErr.rawMessage}); default variant` };
    }
    const chosen = explicit ? assignments.find((a) => a.experimentId === explicit.experimentId) : assignments.find((a) => changesRanking(a.config));
    return { variant: chosen ? fromExperiment(chosen.experimentId, chosen.variant, chosen.config) : DEFAULT_VARIANT };
  }

  private async assignments(userId: string, context: RequestContext | undefined, forced: Record<string, string>, timeoutMs: number): Promise<Assignment[]> {
    const targeting = { device: context?.device, platform: context?.platform, location: context?.location };
    if (this.assigner) return this.assigner.assign(userId, targeting, forced).assignments;
    if (!this.client) throw new ConnectError("no experiment service configured (EXPERIMENT_ADDR)", Code.Unavailable);
    const cacheKey = JSON.stringify([userId, targeting, forced]);
    const cached = this.rpcAnswers.get(cacheKey);
    if (cached) return cached;
    const response = await this.client.assign({ userId, context, forcedVariants: forced }, { timeoutMs });
    this.rpcAnswers.set(cacheKey, response.assignments);
    return response.assignments;
  }
}
