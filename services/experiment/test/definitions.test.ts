import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { ExperimentSchema, ExperimentStatus } from "../../../gen/recsys/experiment/v1/experiment_pb.js";
import { prepareDefinition } from "../definitions.js";
import { experimentInit, stored, type ExperimentInit } from "./helpers.js";

/** The INVALID_ARGUMENT message prepareDefinition throws ("field: problem"). */
function refusal(init: ExperimentInit, previous = undefined as ReturnType<typeof stored> | undefined, others: ReturnType<typeof stored>[] = []): string {
  try {
    prepareDefinition(create(ExperimentSchema, init), previous, others);
  } catch (err) {
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.InvalidArgument);
    return (err as ConnectError).rawMessage;
  }
  throw new Error("definition was accepted");
}

const ranges = (variant: { buckets: { start: number; end: number }[] }) => variant.buckets.map(({ start, end }) => [start, end]);

describe("definition validation", () => {
  it("refuses duplicate variant names", () => {
    const init = experimentInit("dup", { variants: [{ name: "a", allocation: 0.2 }, { name: "a", allocation: 0.2 }] });
    expect(refusal(init)).toBe('experiment.variants[1].name: duplicate variant name "a"');
  });

  it("refuses allocations summing to more than 1, and accepts exactly 1 despite float sums", () => {
    const init = experimentInit("sum", { variants: [{ name: "a", allocation: 0.6 }, { name: "b", allocation: 0.5 }] });
    expect(refusal(init)).toBe("experiment.variants: allocations sum to 1.1; they must sum to at most 1");
    const thirds = stored(experimentInit("thirds", { variants: [0.1, 0.2, 0.7].map((allocation, i) => ({ name: `v${i}`, allocation })) }));
    expect(thirds.variants.map(ranges)).toEqual([[[0, 1000]], [[1000, 3000]], [[3000, 10000]]]);
  });

  it("refuses a layer range running past the layer, and an end before the start", () => {
    expect(refusal(experimentInit("past", { layerOffset: 0.7, layerShare: 0.5 }))).toMatch(/^experiment.layer_share: layer_offset 0.7 \+ layer_share 0.5 run past/);
    const now = Date.now();
    expect(refusal(experimentInit("time", { startTime: timestampFromMs(now), endTime: timestampFromMs(now - 1) }))).toBe(
      "experiment.end_time: end_time must be after start_time",
    );
  });

  it("refuses overlapping ranges in a layer among non-stopped experiments only", () => {
    const a = stored(experimentInit("a", { layer: "ranking", layerShare: 0.5 }));
    const b = experimentInit("b", { layer: "ranking", layerOffset: 0.4, layerShare: 0.3 });
    expect(refusal(b, undefined, [a])).toBe('experiment.layer_offset: layer "ranking": range [0.4, 0.7) overlaps experiment "a" [0, 0.5)');
    expect(refusal({ ...b, status: ExperimentStatus.DRAFT }, undefined, [a])).toMatch(/overlaps experiment "a"/);
    const aStopped = stored(experimentInit("a", { layer: "ranking", layerShare: 0.5, status: ExperimentStatus.STOPPED }));
    expect(stored(b, undefined, [aStopped]).layerOffset).toBe(0.4);
    expect(stored({ ...b, layerOffset: 0.5 }, undefined, [a]).layerOffset).toBe(0.5);
    // layer_share 0 is the rest of the layer, so it overlaps everything after its offset.
    expect(refusal(experimentInit("rest", { layer: "ranking", layerOffset: 0.2 }), undefined, [a])).toMatch(/range \[0.2, 1\) overlaps/);
  });
});

describe("updates keep users where they are", () => {
  const running = stored(experimentInit("live", { variants: [{ name: "control", allocation: 0.1 }, { name: "treatment", allocation: 0.1 }] }));
  const update = (overrides: Partial<ExperimentInit>) => experimentInit("live", { variants: [{ name: "control", allocation: 0.1 }, { name: "treatment", allocation: 0.1 }], ...overrides });

  it("refuses shrinking or removing a variant, or moving the experiment, while it runs", () => {
    expect(refusal(update({ variants: [{ name: "control", allocation: 0.05 }, { name: "treatment", allocation: 0.1 }] }), running)).toMatch(
      /^experiment.variants\[0\].allocation: allocation may only grow \(0.1 -> 0.05\)/,
    );
    expect(refusal(update({ variants: [{ name: "control", allocation: 0.1 }] }), running)).toMatch(/^experiment.variants: cannot remove variant "treatment"/);
    expect(refusal(update({ seed: "new" }), running)).toMatch(/^experiment.seed: cannot change the seed/);
    expect(refusal(update({ layer: "elsewhere" }), running)).toMatch(/^experiment.layer: cannot change the layer/);
    expect(refusal(update({ layerOffset: 0.1 }), running)).toMatch(/^experiment.layer_offset: cannot change layer_offset/);
    expect(refusal(update({ layerShare: 0.5 }), running)).toMatch(/^experiment.layer_share: layer_share may only grow \(\[0, 1\) -> \[0, 0.5\)\)/);
  });

  it("refuses restarting a stopped experiment, and lets a draft change freely", () => {
    const stopped = stored({ ...update({}), status: ExperimentStatus.STOPPED });
    expect(refusal(update({}), stopped)).toBe("experiment.status: a stopped experiment stays stopped; create a new experiment instead");
    const draft = stored({ ...update({}), status: ExperimentStatus.DRAFT });
    const changed = stored(update({ seed: "s2", variants: [{ name: "only", allocation: 0.3 }] }), draft);
    expect(changed.variants.map(ranges)).toEqual([[[0, 3000]]]);
    expect(changed.revision).toBe(draft.revision + 1n);
  });
});

describe("bucket planning", () => {
  it("lays a new experiment out cumulatively", () => {
    const fresh = stored(experimentInit("fresh", { variants: [{ name: "a", allocation: 0.25 }, { name: "b", allocation: 0.5 }] }));
    expect(fresh.variants.map(ranges)).toEqual([[[0, 2500]], [[2500, 7500]]]);
    expect(fresh.revision).toBe(1n);
  });

  it("grows a variant into free buckets without touching the others, and shrinks it from the top", () => {
    const before = stored(experimentInit("grow", { status: ExperimentStatus.DRAFT, variants: [{ name: "a", allocation: 0.1 }, { name: "b", allocation: 0.1 }] }));
    const grown = stored(experimentInit("grow", { status: ExperimentStatus.DRAFT, variants: [{ name: "a", allocation: 0.3 }, { name: "b", allocation: 0.1 }] }), before);
    expect(grown.variants.map(ranges)).toEqual([[[0, 1000], [2000, 4000]], [[1000, 2000]]]);
    const shrunk = stored(experimentInit("grow", { status: ExperimentStatus.DRAFT, variants: [{ name: "a", allocation: 0.15 }, { name: "b", allocation: 0.1 }] }), grown);
    expect(shrunk.variants.map(ranges)).toEqual([[[0, 1000], [2000, 2500]], [[1000, 2000]]]);
  });
});
