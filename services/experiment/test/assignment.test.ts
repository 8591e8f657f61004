import { fromJsonString, toJsonString } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { Device, Platform } from "../../../gen/recsys/common/v1/common_pb.js";
import { ExperimentSchema, ExperimentStatus, type Experiment } from "../../../gen/recsys/experiment/v1/experiment_pb.js";
import { assign, bucketOf, compile, murmur3, type AssignContext, type HoldoutSettings } from "../assignment.js";
import { experimentInit, stored, userIds } from "./helpers.js";

const USERS = userIds(100_000);
const noHoldout: HoldoutSettings = { percent: 0, salt: "global" };

/** Variant of each user in one experiment ("" when not in it). */
function variantsOf(experiments: Experiment[], experimentId: string, users = USERS, holdout = noHoldout): string[] {
  const compiled = compile(experiments);
  return users.map((u) => assign(compiled, holdout, u).assignments.find((a) => a.experimentId === experimentId)?.variant ?? "");
}

function shares(variants: string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const v of variants) counts[v] = (counts[v] ?? 0) + 1;
  return Object.fromEntries(Object.entries(counts).map(([k, n]) => [k, n / variants.length]));
}

describe("hashing", () => {
  it("is MurmurHash3 x86 32-bit (reference test vectors)", () => {
    expect(murmur3("", 0)).toBe(0);
    expect(murmur3("", 1)).toBe(0x514e28b7);
    expect(murmur3("", 0xffffffff)).toBe(0x81f16f39);
    expect(murmur3("\0\0\0\0", 0)).toBe(0x2362f9de);
    expect(murmur3("aaaa", 0x9747b28c)).toBe(0x5a97808a);
    expect(murmur3("abc", 0)).toBe(0xb3dd93fa);
    expect(murmur3("Hello, world!", 0x9747b28c)).toBe(0x24884cba);
    expect(murmur3("The quick brown fox jumps over the lazy dog", 0x9747b28c)).toBe(0x2fa826cd);
  });

  it("hashes UTF-8 bytes: the same values as an independent implementation", () => {
    // From a 15-line Python murmur3 over str.encode("utf-8") (not mmh3, which is not installed).
    expect(murmur3("é")).toBe(0x10110787);
    expect(murmur3("用户-1")).toBe(0xaa88483b);
    expect(bucketOf("experiment/exp", "用户-1")).toBe(6637);
    expect(bucketOf("layer/ranking", "user-42")).toBe(8840);
  });

  it("spreads users evenly over the 10,000 buckets", () => {
    const perDecile = new Array(10).fill(0);
    for (const u of USERS) perDecile[Math.floor(bucketOf("layer/x", u) / 1000)]++;
    for (const n of perDecile) expect(Math.abs(n / USERS.length - 0.1)).toBeLessThan(0.005);
  });
});

describe("assignment on 100,000 synthetic users", () => {
  it("splits 50/50 within ±1%", () => {
    const result = shares(variantsOf([stored(experimentInit("split-50"))], "split-50"));
    expect(Math.abs(result.control! - 0.5)).toBeLessThan(0.01);
    expect(Math.abs(result.treatment! - 0.5)).toBeLessThan(0.01);
    expect(result[""]).toBeUndefined();
  });

  it("splits 90/10 within ±1%", () => {
    const experiment = stored(
      experimentInit("split-90", { variants: [{ name: "control", allocation: 0.9 }, { name: "treatment", allocation: 0.1 }] }),
    );
    const result = shares(variantsOf([experiment], "split-90"));
    expect(Math.abs(result.control! - 0.9)).toBeLessThan(0.01);
    expect(Math.abs(result.treatment! - 0.1)).toBeLessThan(0.01);
  });

  it("gives identical assignments when re-run from a fresh copy of the definitions", () => {
    const definitions = [stored(experimentInit("rerun-a")), stored(experimentInit("rerun-b", { layer: "other", seed: "s1" }))];
    const copy = definitions.map((d) => fromJsonString(ExperimentSchema, toJsonString(ExperimentSchema, d)));
    const run = (experiments: Experiment[]) => {
      const compiled = compile(experiments);
      return USERS.map((u) => assign(compiled, noHoldout, u).assignments.map((a) => `${a.experimentId}=${a.variant}`).join(",")).join("\n");
    };
    const first = run(definitions);
    expect(first).toContain("rerun-a=treatment");
    expect(first).toContain("rerun-b=control");
    expect(run(copy)).toBe(first);
  });

  it("keeps every originally assigned user in place when ramping 10% -> 50%", () => {
    const before = stored(
      experimentInit("ramp", { variants: [{ name: "control", allocation: 0.05 }, { name: "treatment", allocation: 0.05 }] }),
    );
    const after = stored(
      experimentInit("ramp", { variants: [{ name: "control", allocation: 0.25 }, { name: "treatment", allocation: 0.25 }] }),
      before,
    );
    const [was, now] = [variantsOf([before], "ramp"), variantsOf([after], "ramp")];
    const moved = was.filter((v, i) => v !== "" && now[i] !== v).length;
    expect(moved).toBe(0);
    expect(Math.abs(was.filter((v) => v !== "").length / USERS.length - 0.1)).toBeLessThan(0.01);
    expect(Math.abs(now.filter((v) => v !== "").length / USERS.length - 0.5)).toBeLessThan(0.01);
  });

  it("keeps users in place when only the first variant grows (not just the last)", () => {
    const before = stored(
      experimentInit("ramp-first", { variants: [{ name: "control", allocation: 0.1 }, { name: "treatment", allocation: 0.1 }] }),
    );
    const after = stored(
      experimentInit("ramp-first", { variants: [{ name: "control", allocation: 0.6 }, { name: "treatment", allocation: 0.1 }] }),
      before,
    );
    const [was, now] = [variantsOf([before], "ramp-first"), variantsOf([after], "ramp-first")];
    expect(was.filter((v, i) => v !== "" && now[i] !== v).length).toBe(0);
    const result = shares(now);
    expect(Math.abs(result.control! - 0.6)).toBeLessThan(0.01);
    expect(Math.abs(result.treatment! - 0.1)).toBeLessThan(0.01);
  });

  it("never puts a user in two experiments of one layer, and crosses layers independently", () => {
    const ranking = [
      stored(experimentInit("rank-a", { layer: "ranking", layerOffset: 0, layerShare: 0.3 })),
      stored(experimentInit("rank-b", { layer: "ranking", layerOffset: 0.3, layerShare: 0.3 })),
      stored(experimentInit("rank-c", { layer: "ranking", layerOffset: 0.6, layerShare: 0 })),
    ];
    const ui = stored(experimentInit("ui-a", { layer: "ui", layerShare: 0.5 }));
    const compiled = compile([...ranking, ui]);
    const perExperiment: Record<string, number> = {};
    let inRankAAndUi = 0;
    let sharingALayer = 0;
    for (const u of USERS) {
      const { assignments } = assign(compiled, noHoldout, u);
      const layers = assignments.map((a) => a.layer);
      if (new Set(layers).size !== layers.length) sharingALayer++;
      for (const a of assignments) perExperiment[a.experimentId] = (perExperiment[a.experimentId] ?? 0) + 1;
      if (assignments.some((a) => a.experimentId === "rank-a") && assignments.some((a) => a.experimentId === "ui-a")) inRankAAndUi++;
    }
    expect(sharingALayer).toBe(0);
    const share = (id: string) => perExperiment[id]! / USERS.length;
    expect(Math.abs(share("rank-a") - 0.3)).toBeLessThan(0.01);
    expect(Math.abs(share("rank-b") - 0.3)).toBeLessThan(0.01);
    expect(Math.abs(share("rank-c") - 0.4)).toBeLessThan(0.01);
    expect(share("rank-a") + share("rank-b") + share("rank-c")).toBeCloseTo(1, 10);
    // Independent layers: P(rank-a and ui-a) = 0.3 * 0.5.
    expect(Math.abs(inRankAAndUi / USERS.length - 0.15)).toBeLessThan(0.01);
  });

  it("holds out the global holdout share from every experiment, the same users every time", () => {
    const experiments = [stored(experimentInit("held-a")), stored(experimentInit("held-b", { layer: "b" }))];
    const holdout: HoldoutSettings = { percent: 5, salt: "q3" };
    const compiled = compile(experiments);
    let held = 0;
    let wrong = 0;
    for (const u of USERS) {
      const result = assign(compiled, holdout, u);
      if (result.holdout) held++;
      if (result.assignments.length !== (result.holdout ? 0 : 2)) wrong++;
    }
    expect(wrong).toBe(0);
    expect(Math.abs(held / USERS.length - 0.05)).toBeLessThan(0.01);
    const again = compile([]);
    expect(USERS.filter((u) => assign(again, holdout, u).holdout).length).toBe(held);
  });
});

describe("eligibility", () => {
  const user = "user-42";
  const one = (experiment: Experiment, context: AssignContext = {}, nowMs = Date.now()) =>
    assign(compile([experiment]), noHoldout, user, context, {}, nowMs).assignments.length;
  const full = { variants: [{ name: "on", allocation: 1 }] };

  it("targets devices, platforms and location prefixes", () => {
    const targeted = stored(
      experimentInit("targeted", { ...full, targeting: { devices: [Device.MOBILE], platforms: [Platform.IOS, Platform.ANDROID], locations: ["US", "FR-75"] } }),
    );
    expect(one(targeted, { device: Device.MOBILE, platform: Platform.IOS, location: "US-CA" })).toBe(1);
    expect(one(targeted, { device: Device.MOBILE, platform: Platform.ANDROID, location: "FR-75" })).toBe(1);
    expect(one(targeted, { device: Device.DESKTOP, platform: Platform.IOS, location: "US" })).toBe(0);
    expect(one(targeted, { device: Device.MOBILE, platform: Platform.WEB, location: "US" })).toBe(0);
    expect(one(targeted, { device: Device.MOBILE, platform: Platform.IOS, location: "FR" })).toBe(0);
    expect(one(targeted, { device: Device.MOBILE, platform: Platform.IOS, location: "USA" })).toBe(0);
    expect(one(targeted, {})).toBe(0);
  });

  it("assigns only running experiments inside their time window", () => {
    const now = Date.parse("2025-06-01T12:00:00Z");
    const window = { startTime: timestampFromMs(now - 1_000), endTime: timestampFromMs(now + 1_000) };
    expect(one(stored(experimentInit("timed", { ...full, ...window })), {}, now)).toBe(1);
    expect(one(stored(experimentInit("timed", { ...full, ...window })), {}, now + 1_000)).toBe(0);
    expect(one(stored(experimentInit("timed", { ...full, ...window })), {}, now - 1_001)).toBe(0);
    expect(one(stored(experimentInit("draft", { ...full, status: ExperimentStatus.DRAFT })))).toBe(0);
    expect(one(stored(experimentInit("stopped", { ...full, status: ExperimentStatus.STOPPED })))).toBe(0);
  });

  it("forces a variant for QA, even in a draft, replacing the hashed assignment of its layer", () => {
    const live = stored(experimentInit("live", { layer: "ranking", layerShare: 0.5 }));
    const draft = stored(experimentInit("qa", { layer: "ranking", layerOffset: 0.5, status: ExperimentStatus.DRAFT }));
    const compiled = compile([live, draft]);
    const inLive = USERS.find((u) => assign(compiled, noHoldout, u).assignments.length === 1)!;
    const forced = assign(compiled, { percent: 100, salt: "all" }, inLive, {}, { qa: "treatment" });
    expect(forced.holdout).toBe(true);
    expect(forced.assignments).toEqual([
      { experimentId: "qa", layer: "ranking", variant: "treatment", config: draft.variants[1]!.config, forced: true },
    ]);
  });

  it("refuses a forced experiment or variant that does not exist, naming it", () => {
    const compiled = compile([stored(experimentInit("exists"))]);
    expect(() => assign(compiled, noHoldout, user, {}, { nope: "control" })).toThrow(/forced_variants\["nope"\]: no draft or running experiment "nope"/);
    expect(() => assign(compiled, noHoldout, user, {}, { exists: "blue" })).toThrow(
      /forced_variants\["exists"\]: experiment "exists" has no variant "blue" \(variants: control, treatment\)/,
    );
  });
});
