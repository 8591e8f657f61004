import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, ConnectError } from "@connectrpc/connect";
import { Device, Platform } from "../../../gen/recsys/common/v1/common_pb.js";
import { ExperimentService, ExperimentStatus, type Experiment, type VariantConfig } from "../../../gen/recsys/experiment/v1/experiment_pb.js";
import { startTestRedis, type TestRedisTarget } from "../../../test/support/redis-cluster.js";
import { createServiceClient, type RunningServer } from "../../kit/index.js";
import { createAssigner, loadAssignerConfig, type Assigner } from "../assigner.js";
import type { AssignmentResult } from "../assignment.js";
import { startExperimentService } from "../server.js";
import { reference } from "./fixtures/scipy-reference.js";
import { experimentInit, userIds, type ExperimentInit } from "./helpers.js";

const TOKEN = "test-admin-token-123";
const admin = { headers: { authorization: `Bearer ${TOKEN}` } };

async function failure(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("the call succeeded");
}

async function until(condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Comparable view of an assignment from the RPC or the library. */
const summary = (a: Omit<AssignmentResult, "config"> & { config?: VariantConfig }) =>
  `${a.layer}/${a.experimentId}=${a.variant}${a.forced ? "(forced)" : ""}@${a.config?.modelVersion ?? ""}`;

describe("experiment service over gRPC with a real Redis", () => {
  let redis: TestRedisTarget;
  let server: RunningServer;
  let client: ReturnType<typeof createServiceClient<typeof ExperimentService>>;
  let library: Assigner;

  const createExperiment = async (init: ExperimentInit): Promise<Experiment> => (await client.createExperiment({ experiment: init }, admin)).experiment!;

  beforeAll(async () => {
    redis = await startTestRedis();
    const env = { GRPC_PORT: "0", LOG_LEVEL: "silent", ...redis.env, ADMIN_TOKEN: TOKEN, HOLDOUT_PERCENT: "3", EXPERIMENTS_REFRESH_MS: "60000" };
    server = await startExperimentService(env);
    client = createServiceClient(ExperimentService, `127.0.0.1:${server.port}`);
    // The prediction service's view: its own connections and cache; the periodic refresh is
    // far away, so only the pub/sub notice can bring it changes during the test.
    library = await createAssigner(loadAssignerConfig({ ...redis.env, HOLDOUT_PERCENT: "3", EXPERIMENTS_REFRESH_MS: "60000" }));
  });
  afterAll(async () => {
    await library?.close();
    await server?.shutdown();
    await redis?.stop();
  });

  describe("admin calls", () => {
    it("refuse a missing or wrong token with UNAUTHENTICATED", async () => {
      const wrong = { headers: { authorization: "Bearer nope-nope-nope" } };
      const calls = [
        client.createExperiment({ experiment: experimentInit("noauth") }),
        client.createExperiment({ experiment: experimentInit("noauth") }, wrong),
        client.updateExperiment({ experiment: { ...experimentInit("noauth"), revision: 1n } }),
        client.listExperiments({}),
        client.listExperiments({}, wrong),
      ];
      for (const call of calls) {
        const err = await failure(call);
        expect(err.code).toBe(Code.Unauthenticated);
        expect(err.rawMessage).toMatch(/bearer token/);
      }
      const { experiments } = await client.listExperiments({}, admin);
      expect(experiments.map((e) => e.id)).not.toContain("noauth");
    });

    it("create, list and update with optimistic concurrency on the revision", async () => {
      const created = await createExperiment(experimentInit("occ", { layer: "occ", variants: [{ name: "control", allocation: 0.1 }, { name: "treatment", allocation: 0.1 }] }));
      expect(created.revision).toBe(1n);
      expect(created.variants.map((v) => v.buckets.map((r) => [r.start, r.end]))).toEqual([[[0, 1000]], [[1000, 2000]]]);

      const duplicate = await failure(client.createExperiment({ experiment: experimentInit("occ") }, admin));
      expect(duplicate.code).toBe(Code.AlreadyExists);

      const ramped = { ...experimentInit("occ", { layer: "occ", variants: [{ name: "control", allocation: 0.3 }, { name: "treatment", allocation: 0.1 }] }), revision: 1n };
      const updated = (await client.updateExperiment({ experiment: ramped }, admin)).experiment!;
      expect(updated.revision).toBe(2n);
      expect(updated.variants[0]!.buckets.map((r) => [r.start, r.end])).toEqual([[0, 1000], [2000, 4000]]);

      const stale = await failure(client.updateExperiment({ experiment: ramped }, admin));
      expect(stale.code).toBe(Code.Aborted);
      expect(stale.rawMessage).toBe('experiment "occ": revision 1 is stale, the stored one is 2; read it again and retry');

      const missing = await failure(client.updateExperiment({ experiment: { ...experimentInit("ghost"), revision: 1n } }, admin));
      expect(missing.code).toBe(Code.NotFound);

      const { experiments } = await client.listExperiments({ layer: "occ", status: ExperimentStatus.RUNNING }, admin);
      expect(experiments.map((e) => [e.id, e.revision])).toEqual([["occ", 2n]]);
      expect((await client.listExperiments({ layer: "occ", status: ExperimentStatus.DRAFT }, admin)).experiments).toEqual([]);
    });

    it("let exactly one of concurrent conflicting writes win", async () => {
      // Five overlapping experiments for one layer at once: the layer check and the write are atomic together.
      const creates = await Promise.allSettled(
        ["race-a", "race-b", "race-c", "race-d", "race-e"].map((id) => createExperiment(experimentInit(id, { layer: "race", layerShare: 0.6 }))),
      );
      expect(creates.filter((r) => r.status === "fulfilled")).toHaveLength(1);
      for (const r of creates) {
        if (r.status === "rejected") expect(ConnectError.from(r.reason).rawMessage).toMatch(/overlaps experiment "race-/);
      }
      const winner = (await client.listExperiments({ layer: "race" }, admin)).experiments;
      expect(winner).toHaveLength(1);

      // Three updates from the same revision: one lands, the others are stale.
      const updates = await Promise.allSettled(
        [0.7, 0.8, 0.9].map((layerShare) => client.updateExperiment({ experiment: { ...winner[0]!, layerShare } }, admin)),
      );
      expect(updates.filter((r) => r.status === "fulfilled")).toHaveLength(1);
      for (const r of updates) if (r.status === "rejected") expect(ConnectError.from(r.reason).code).toBe(Code.Aborted);
    });

    it("refuse bad definitions with INVALID_ARGUMENT naming the problem", async () => {
      await createExperiment(experimentInit("layer-owner", { layer: "shared", layerShare: 0.5 }));
      const cases: [ExperimentInit, string][] = [
        [experimentInit("bad-alloc", { variants: [{ name: "a", allocation: 1.5 }] }), "experiment.variants[0].allocation"],
        [experimentInit("Bad Id"), "experiment.id"],
        [experimentInit("bad-status", { status: ExperimentStatus.UNSPECIFIED }), "experiment.status"],
        [experimentInit("bad-location", { targeting: { locations: ["california"] } }), "experiment.targeting.locations[0]"],
        [experimentInit("bad-sum", { variants: [{ name: "a", allocation: 0.7 }, { name: "b", allocation: 0.7 }] }), "experiment.variants: allocations sum to 1.4"],
        [experimentInit("bad-dup", { variants: [{ name: "a", allocation: 0.1 }, { name: "a", allocation: 0.1 }] }), 'experiment.variants[1].name: duplicate variant name "a"'],
        [experimentInit("bad-overlap", { layer: "shared", layerOffset: 0.25, layerShare: 0.5 }), 'overlaps experiment "layer-owner"'],
      ];
      for (const [init, problem] of cases) {
        const err = await failure(client.createExperiment({ experiment: init }, admin));
        expect(err.code, problem).toBe(Code.InvalidArgument);
        expect(err.rawMessage).toContain(problem);
      }
      const shrink = await failure(
        client.updateExperiment({ experiment: { ...experimentInit("layer-owner", { layer: "shared", layerShare: 0.25 }), revision: 1n } }, admin),
      );
      expect(shrink.code).toBe(Code.InvalidArgument);
      expect(shrink.rawMessage).toMatch(/^experiment.layer_share: layer_share may only grow/);
    });
  });

  describe("assignment", () => {
    it("answers the Assign RPC exactly as the in-process library, and the library follows an update within moments", async () => {
      await createExperiment(experimentInit("ranker", { layer: "ranking", layerShare: 0.6, variants: [{ name: "control", allocation: 0.2, config: { modelVersion: "v1" } }, { name: "gbdt-heavy", allocation: 0.2, config: { modelVersion: "v2" } }] }));
      await createExperiment(experimentInit("mobile-only", { layer: "ui", targeting: { devices: [Device.MOBILE] } }));
      const users = userIds(600, "rpc-");
      const context = { device: Device.MOBILE, platform: Platform.IOS, location: "US-CA" };
      const compare = async () => {
        await until(() => library.experiment("mobile-only") !== undefined, 20_000);
        let assigned = 0;
        for (let i = 0; i < users.length; i += 200) {
          const batch = users.slice(i, i + 200);
          const answers = await Promise.all(batch.map((userId) => client.assign({ userId, context })));
          answers.forEach((answer, j) => {
            const local = library.assign(batch[j]!, context);
            expect(answer.holdout).toBe(local.holdout);
            expect(answer.assignments.map(summary)).toEqual(local.assignments.map(summary));
            assigned += answer.assignments.filter((a) => a.experimentId === "ranker").length;
          });
        }
        return assigned / users.length;
      };
      // 0.6 of the layer, 0.4 of those allocated, less the 3% holdout.
      expect(Math.abs((await compare()) - 0.6 * 0.4 * 0.97)).toBeLessThan(0.05);

      const stored = (await client.listExperiments({ layer: "ranking" }, admin)).experiments[0]!;
      const before = new Map(users.map((u) => [u, library.assign(u, context).assignments.find((a) => a.experimentId === "ranker")?.variant]));
      const ramped = { ...stored, variants: stored.variants.map((v) => ({ ...v, allocation: 0.5 })) };
      const versionBefore = library.version();
      await client.updateExperiment({ experiment: ramped }, admin);
      await until(() => library.version() > versionBefore, 20_000);
      expect(Math.abs((await compare()) - 0.6 * 1 * 0.97)).toBeLessThan(0.05);
      for (const [user, variant] of before) {
        if (variant) expect(library.assign(user, context).assignments.find((a) => a.experimentId === "ranker")?.variant).toBe(variant);
      }
    });

    it("applies targeting from the request context and forced variants for QA", async () => {
      const desktop = await client.assign({ userId: "u-desktop", context: { device: Device.DESKTOP } });
      expect(desktop.assignments.map((a) => a.experimentId)).not.toContain("mobile-only");
      const forced = await client.assign({ userId: "u-qa", forcedVariants: { ranker: "gbdt-heavy" } });
      expect(forced.assignments.find((a) => a.layer === "ranking")).toMatchObject({ experimentId: "ranker", variant: "gbdt-heavy", forced: true });
      expect(forced.assignments.find((a) => a.layer === "ranking")?.config?.modelVersion).toBe("v2");
      const unknown = await failure(client.assign({ userId: "u-qa", forcedVariants: { ranker: "purple" } }));
      expect(unknown.code).toBe(Code.InvalidArgument);
      expect(unknown.rawMessage).toContain('forced_variants["ranker"]: experiment "ranker" has no variant "purple"');
      const invalid = await failure(client.assign({ userId: "" }));
      expect(invalid.code).toBe(Code.InvalidArgument);
      expect(invalid.rawMessage).toContain("user_id");
    });
  });

  describe("exposures, outcomes and results", () => {
    const e2e = reference.end_to_end;
    /** Users of a variant with their outcome values (none: exposed, never converted). */
    const usersOf = (rows: unknown) => rows as [string, number[]][];

    it("deduplicates exposures by id and refuses unknown experiments and variants", async () => {
      await createExperiment(experimentInit("dedup"));
      const exposures = [
        { exposureId: "x1", experimentId: "dedup", variant: "control", userId: "a" },
        { exposureId: "x2", experimentId: "dedup", variant: "control", userId: "a" },
        { exposureId: "x3", experimentId: "dedup", variant: "treatment", userId: "b" },
      ];
      expect(await client.recordExposures({ exposures })).toMatchObject({ recorded: 3, duplicates: 0 });
      expect(await client.recordExposures({ exposures })).toMatchObject({ recorded: 0, duplicates: 3 });

      const unknownExperiment = await failure(client.recordExposures({ exposures: [exposures[0]!, { ...exposures[0]!, exposureId: "x9", experimentId: "nope" }] }));
      expect(unknownExperiment.code).toBe(Code.InvalidArgument);
      expect(unknownExperiment.rawMessage).toBe('exposures[1].experiment_id: no experiment "nope"');
      const unknownVariant = await failure(client.recordExposures({ exposures: [{ ...exposures[0]!, exposureId: "x9", variant: "blue" }] }));
      expect(unknownVariant.rawMessage).toBe('exposures[0].variant: experiment "dedup" has no variant "blue" (variants: control, treatment)');

      const results = await client.getResults({ experimentId: "dedup" });
      expect(results.variants.map((v) => [v.variant, v.exposures, v.users])).toEqual([
        ["control", 2n, 1n],
        ["treatment", 1n, 1n],
      ]);
    });

    it("refuses outcomes of users never exposed (nothing recorded) and malformed outcomes", async () => {
      const outcome = { outcomeId: "o1", experimentId: "dedup", userId: "a", metric: "conversion", value: 1 };
      const unexposed = await failure(client.recordOutcome({ outcomes: [outcome, { ...outcome, outcomeId: "o2", userId: "stranger" }] }));
      expect(unexposed.code).toBe(Code.FailedPrecondition);
      expect(unexposed.rawMessage).toMatch(/^outcomes\[1\].user_id: user "stranger" was never exposed to experiment "dedup"; record the exposure first/);
      expect((await client.getResults({ experimentId: "dedup" })).variants[0]!.conversions).toBe(0n);

      const elsewhere = await failure(client.recordOutcome({ outcomes: [{ ...outcome, experimentId: "ranker", outcomeId: "o3" }, outcome] }));
      expect(elsewhere.code).toBe(Code.FailedPrecondition);
      expect(elsewhere.rawMessage).toMatch(/^outcomes\[0\].user_id: user "a" was never exposed to experiment "ranker"/);
      expect((await client.getResults({ experimentId: "dedup" })).variants[0]!.conversions).toBe(0n);

      const malformed: [Record<string, unknown>, string][] = [
        [{ ...outcome, value: Number.NaN }, "outcomes[0].value"],
        [{ ...outcome, metric: "Revenue $" }, "outcomes[0].metric"],
        [{ ...outcome, outcomeId: "" }, "outcomes[0].outcome_id"],
        [{ ...outcome, experimentId: "nope" }, 'outcomes[0].experiment_id: no experiment "nope"'],
      ];
      for (const [bad, problem] of malformed) {
        const err = await failure(client.recordOutcome({ outcomes: [bad] }));
        expect(err.code, problem).toBe(Code.InvalidArgument);
        expect(err.rawMessage).toContain(problem);
      }

      expect(await client.recordOutcome({ outcomes: [outcome, outcome] })).toMatchObject({ recorded: 1, duplicates: 1 });
      expect(await client.recordOutcome({ outcomes: [outcome] })).toMatchObject({ recorded: 0, duplicates: 1 });
      const results = await client.getResults({ experimentId: "dedup" });
      expect(results.variants[0]).toMatchObject({ users: 1n, conversions: 1n, conversionRate: 1, mean: 1 });
    });

    it("computes per-variant results that match scipy to 1e-6, per user, counting every event once", async () => {
      await createExperiment(experimentInit("checkout", { primaryMetric: "revenue" }));
      const groups = [
        ["control", usersOf(e2e.control)],
        ["treatment", usersOf(e2e.treatment)],
      ] as const;
      const exposures = groups.flatMap(([variant, users]) =>
        users.map(([userId]) => ({ exposureId: `e-${userId}`, experimentId: "checkout", variant, userId })),
      );
      // A second exposure of ten users: more exposure events, the same users.
      const repeated = exposures.slice(0, 10).map((e) => ({ ...e, exposureId: `${e.exposureId}-again` }));
      expect((await client.recordExposures({ exposures: [...exposures, ...repeated] })).recorded).toBe(exposures.length + 10);
      const outcomes = groups.flatMap(([, users]) =>
        users.flatMap(([userId, values]) => values.map((value, k) => ({ outcomeId: `r-${userId}-${k}`, experimentId: "checkout", userId, metric: "revenue", value }))),
      );
      const half = Math.floor(outcomes.length / 2);
      await client.recordOutcome({ outcomes: outcomes.slice(0, half) });
      // Retried batch overlapping the first: the overlap counts once.
      expect(await client.recordOutcome({ outcomes: outcomes.slice(half - 5) })).toMatchObject({ recorded: outcomes.length - half, duplicates: 5 });

      const results = await client.getResults({ experimentId: "checkout", alpha: e2e.alpha });
      expect(results.metric).toBe("revenue");
      const [control, treatment] = results.variants;
      const close = (actual: number, expected: number, what: string) =>
        expect(Math.abs(actual - expected), `${what}: ${actual} vs scipy ${expected}`).toBeLessThanOrEqual(1e-6 * Math.abs(expected));
      for (const [result, expected] of [
        [control!, e2e.expected_control],
        [treatment!, e2e.expected_treatment],
      ] as const) {
        expect(result.users).toBe(BigInt(expected.users));
        expect(result.conversions).toBe(BigInt(expected.conversions));
        close(result.conversionRate, expected.rate, "rate");
        close(result.conversionRateCiLow, expected.rate_ci[0]!, "rate ci low");
        close(result.conversionRateCiHigh, expected.rate_ci[1]!, "rate ci high");
        close(result.mean, expected.mean, "mean");
        close(result.meanCiLow, expected.mean_ci[0]!, "mean ci low");
        close(result.meanCiHigh, expected.mean_ci[1]!, "mean ci high");
      }
      expect(control!.exposures).toBe(BigInt(e2e.control.length + 10));
      close(treatment!.lift, e2e.expected_treatment.lift, "lift");
      close(treatment!.pValueProportion, e2e.expected_treatment.p_value_proportion, "z-test p");
      close(treatment!.pValueMean, e2e.expected_treatment.p_value_mean, "Welch p");
      close(treatment!.pValueSequential, e2e.expected_treatment.p_value_sequential, "mSPRT p");
      expect(treatment!.significant).toBe(e2e.expected_treatment.p_value_sequential < e2e.alpha);
      close(results.sampleRatio!.chiSquare, e2e.expected_srm.chi_square, "SRM chi-square");
      close(results.sampleRatio!.pValue, e2e.expected_srm.p_value, "SRM p");
      expect(results.sampleRatio!.mismatch).toBe(false);
    });

    it("flags a sample-ratio mismatch on a skewed sample", async () => {
      await createExperiment(experimentInit("skewed"));
      const exposures = [...userIds(600, "s-c-").map((userId) => ({ userId, variant: "control" })), ...userIds(400, "s-t-").map((userId) => ({ userId, variant: "treatment" }))].map(
        (e) => ({ ...e, exposureId: `x-${e.userId}`, experimentId: "skewed" }),
      );
      await client.recordExposures({ exposures });
      const { sampleRatio } = await client.getResults({ experimentId: "skewed", metric: "conversion" });
      expect(sampleRatio!.chiSquare).toBeCloseTo(40, 9);
      expect(sampleRatio!.pValue).toBeLessThan(0.001);
      expect(sampleRatio!.mismatch).toBe(true);
    });

    it("answers NOT_FOUND for results of an unknown experiment", async () => {
      expect((await failure(client.getResults({ experimentId: "ghost" }))).code).toBe(Code.NotFound);
    });
  });

  describe("when Redis goes away", () => {
    it("recording fails fast with UNAVAILABLE while Assign keeps answering from the cached definitions", async () => {
      await redis.kill();
      // A generous deadline: a store that waited for Redis would end in DEADLINE_EXCEEDED.
      const err = await failure(client.recordExposures({ exposures: [{ exposureId: "late", experimentId: "dedup", variant: "control", userId: "z" }] }, { timeoutMs: 15_000 }));
      expect(err.code).toBe(Code.Unavailable);
      const answer = await client.assign({ userId: "u-qa", forcedVariants: { ranker: "control" } });
      expect(answer.assignments.find((a) => a.experimentId === "ranker")?.variant).toBe("control");
      expect(library.assign("u-qa", {}, { ranker: "control" }).assignments.map(summary)).toEqual(answer.assignments.map(summary));
    });
  });
});
