import { describe, expect, it } from "vitest";
import {
  chiSquareGoodnessOfFit,
  chiSquareSurvival,
  meanInterval,
  msprtPValue,
  normalCdf,
  normalQuantile,
  studentTCdf,
  studentTQuantile,
  twoProportionZTest,
  welchTTest,
  wilsonInterval,
} from "../stats.js";
import { reference } from "./fixtures/scipy-reference.js";

/** Within 1e-6 of scipy, relative to the value (so tiny tail probabilities are checked too); 1e-12 around 0. */
function expectClose(actual: number, expected: number, what: string) {
  const tolerance = expected === 0 ? 1e-12 : 1e-6 * Math.abs(expected);
  expect(Math.abs(actual - expected), `${what}: ${actual} vs scipy ${expected}`).toBeLessThanOrEqual(tolerance);
}

describe("distributions match scipy to 1e-6", () => {
  it("normal CDF and quantile", () => {
    for (const { z, expected } of reference.normal_cdf) expectClose(normalCdf(z), expected, `norm.cdf(${z})`);
    for (const { p, expected } of reference.normal_quantile) expectClose(normalQuantile(p), expected, `norm.ppf(${p})`);
  });

  it("Student t CDF and quantile, with fractional and huge degrees of freedom", () => {
    for (const { t, df, expected } of reference.t_cdf) expectClose(studentTCdf(t, df), expected, `t.cdf(${t}, ${df})`);
    for (const { p, df, expected } of reference.t_quantile) expectClose(studentTQuantile(p, df), expected, `t.ppf(${p}, ${df})`);
  });

  it("chi-square survival function", () => {
    for (const { x, k, expected } of reference.chi2_sf) expectClose(chiSquareSurvival(x, k), expected, `chi2.sf(${x}, ${k})`);
  });
});

describe("tests and intervals match scipy to 1e-6", () => {
  it("two-proportion z-test", () => {
    for (const c of reference.z_test) {
      const { z, pValue } = twoProportionZTest(c.x1, c.n1, c.x2, c.n2);
      expectClose(z, c.z, `z ${JSON.stringify(c)}`);
      expectClose(pValue, c.p_value, `p ${JSON.stringify(c)}`);
    }
  });

  it("Welch's t-test: statistic, Welch–Satterthwaite df and p-value (scipy.stats.ttest_ind_from_stats)", () => {
    for (const c of reference.welch) {
      const { t, df, pValue } = welchTTest(c.a, c.b);
      expectClose(t, c.t, `t ${JSON.stringify(c)}`);
      expectClose(df, c.df, `df ${JSON.stringify(c)}`);
      expectClose(pValue, c.p_value, `p ${JSON.stringify(c)}`);
    }
  });

  it("Wilson score interval (scipy binomtest(...).proportion_ci(method='wilson'))", () => {
    for (const c of reference.wilson) {
      const [low, high] = wilsonInterval(c.k, c.n, c.alpha);
      expectClose(low, c.low, `low ${JSON.stringify(c)}`);
      expectClose(high, c.high, `high ${JSON.stringify(c)}`);
    }
  });

  it("Student-t interval of a mean (scipy t.interval)", () => {
    for (const c of reference.mean_ci) {
      const [low, high] = meanInterval({ n: c.n, mean: c.mean, variance: c.variance }, c.alpha);
      expectClose(low, c.low, `low ${JSON.stringify(c)}`);
      expectClose(high, c.high, `high ${JSON.stringify(c)}`);
    }
  });

  it("chi-square SRM statistic, df and p-value (scipy.stats.chisquare)", () => {
    for (const c of reference.srm) {
      const result = chiSquareGoodnessOfFit(c.observed, c.weights);
      expectClose(result.chiSquare, c.chi_square, `chi2 ${JSON.stringify(c.observed)}`);
      expect(result.df).toBe(c.df);
      expectClose(result.pValue, c.p_value, `p ${JSON.stringify(c.observed)}`);
    }
  });

  it("mSPRT always-valid p-value (independent numpy implementation of Johari et al.'s formula)", () => {
    for (const c of reference.msprt) expectClose(msprtPValue(c.a, c.b, c.tau), c.p_value, `msprt ${JSON.stringify(c)}`);
  });
});

describe("statistics edge cases", () => {
  it("flags a skewed split as a sample-ratio mismatch and a fair one not", () => {
    expect(chiSquareGoodnessOfFit([5_600, 4_400], [1, 1]).pValue).toBeLessThan(0.001);
    expect(chiSquareGoodnessOfFit([5_030, 4_970], [1, 1]).pValue).toBeGreaterThan(0.001);
    // A 90/10 split judged against its own weights, not against 50/50.
    expect(chiSquareGoodnessOfFit([9_020, 980], [9, 1]).pValue).toBeGreaterThan(0.001);
    // Variants with no allocation take no part: one degree of freedom, not two.
    expect(chiSquareGoodnessOfFit([500, 500, 7], [1, 1, 0]).df).toBe(1);
  });

  it("answers 'no evidence' rather than NaN when a test is undefined", () => {
    expect(twoProportionZTest(0, 0, 3, 10).pValue).toBe(1);
    expect(twoProportionZTest(0, 10, 0, 10).pValue).toBe(1);
    expect(welchTTest({ n: 1, mean: 1, variance: 0 }, { n: 10, mean: 2, variance: 1 }).pValue).toBe(1);
    expect(msprtPValue({ n: 1, mean: 1, variance: 0 }, { n: 10, mean: 2, variance: 1 }, 0.05)).toBe(1);
    expect(meanInterval({ n: 1, mean: 3, variance: 0 }, 0.05)).toEqual([-Infinity, Infinity]);
    expect(wilsonInterval(0, 0, 0.05)).toEqual([0, 1]);
  });

  it("the sequential p-value only drops below alpha with real evidence", () => {
    const control = { n: 20_000, mean: 0.1, variance: 0.09 };
    expect(msprtPValue(control, { n: 20_000, mean: 0.1, variance: 0.09 }, 0.05)).toBe(1);
    expect(msprtPValue(control, { n: 20_000, mean: 0.115, variance: 0.102 }, 0.05)).toBeLessThan(0.05);
  });
});
