// Statistics for experiment results: the distributions (normal, Student t, chi-square)
// from the regularized incomplete gamma and beta functions, and the tests built on
// them. Checked against scipy to 1e-6 in test/stats.test.ts.

const EPS = 1e-16;
const FPMIN = 1e-300;
const MAX_ITERATIONS = 100_000;

const LANCZOS = [
  0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059,
  12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7,
];

/** ln Γ(x) for x > 0 (Lanczos, g = 7; relative error ~1e-15). */
export function logGamma(x: number): number {
  if (x < 0.5) return Math.log(Math.PI / Math.abs(Math.sin(Math.PI * x))) - logGamma(1 - x);
  const z = x - 1;
  let sum = LANCZOS[0]!;
  for (let i = 1; i < LANCZOS.length; i++) sum += LANCZOS[i]! / (z + i);
  const t = z + 7.5;
  return 0.5 * Math.log(2 * Math.PI) + (z + 0.5) * Math.log(t) - t + Math.log(sum);
}

/** Regularized lower incomplete gamma P(a, x) and its complement Q(a, x). */
function incompleteGamma(a: number, x: number): { p: number; q: number } {
  if (x <= 0) return { p: 0, q: 1 };
  const prefactor = Math.exp(-x + a * Math.log(x) - logGamma(a));
  if (x < a + 1) {
    // Series.
    let term = 1 / a;
    let sum = term;
    for (let n = 1; n < MAX_ITERATIONS; n++) {
      term *= x / (a + n);
      sum += term;
      if (Math.abs(term) < Math.abs(sum) * EPS) break;
    }
    const p = sum * prefactor;
    return { p, q: 1 - p };
  }
  // Continued fraction (modified Lentz).
  let b = x + 1 - a;
  let c = 1 / FPMIN;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < MAX_ITERATIONS; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < FPMIN) d = FPMIN;
    c = b + an / c;
    if (Math.abs(c) < FPMIN) c = FPMIN;
    d = 1 / d;
    const delta = d * c;
    h *= delta;
    if (Math.abs(delta - 1) < EPS) break;
  }
  const q = prefactor * h;
  return { p: 1 - q, q };
}

/** Continued fraction of the incomplete beta function (modified Lentz). */
function betaContinuedFraction(x: number, a: number, b: number): number {
  const qab = a + b;
  const qap = a + 1;
  const qam = a - 1;
  let c = 1;
  let d = 1 - (qab * x) / qap;
  if (Math.abs(d) < FPMIN) d = FPMIN;
  d = 1 / d;
  let h = d;
  for (let m = 1; m < MAX_ITERATIONS; m++) {
    const m2 = 2 * m;
    let aa = (m * (b - m) * x) / ((qam + m2) * (a + m2));
    d = 1 + aa * d;
    if (Math.abs(d) < FPMIN) d = FPMIN;
    c = 1 + aa / c;
    if (Math.abs(c) < FPMIN) c = FPMIN;
    d = 1 / d;
    h *= d * c;
    aa = (-(a + m) * (qab + m) * x) / ((a + m2) * (qap + m2));
    d = 1 + aa * d;
    if (Math.abs(d) < FPMIN) d = FPMIN;
    c = 1 + aa / c;
    if (Math.abs(c) < FPMIN) c = FPMIN;
    d = 1 / d;
    const delta = d * c;
    h *= delta;
    if (Math.abs(delta - 1) < EPS) break;
  }
  return h;
}

/** Regularized incomplete beta I_x(a, b). */
export function incompleteBeta(x: number, a: number, b: number): number {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const front = Math.exp(logGamma(a + b) - logGamma(a) - logGamma(b) + a * Math.log(x) + b * Math.log1p(-x));
  // The continued fraction converges fast for x < (a + 1) / (a + b + 2); use symmetry otherwise.
  if (x < (a + 1) / (a + b + 2)) return (front * betaContinuedFraction(x, a, b)) / a;
  return 1 - (front * betaContinuedFraction(1 - x, b, a)) / b;
}

/** erfc(x), accurate in the tails (erfc(x) = Q(1/2, x^2) for x >= 0). */
export function erfc(x: number): number {
  const { p, q } = incompleteGamma(0.5, x * x);
  return x >= 0 ? q : 1 + p;
}

/** Standard normal CDF. */
export function normalCdf(z: number): number {
  return 0.5 * erfc(-z / Math.SQRT2);
}

/** Standard normal quantile: Acklam's approximation plus one Halley step (full double precision). */
export function normalQuantile(p: number): number {
  if (p <= 0) return -Infinity;
  if (p >= 1) return Infinity;
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const low = 0.02425;
  let x: number;
  if (p < low) {
    const q = Math.sqrt(-2 * Math.log(p));
    x = (((((c[0]! * q + c[1]!) * q + c[2]!) * q + c[3]!) * q + c[4]!) * q + c[5]!) / ((((d[0]! * q + d[1]!) * q + d[2]!) * q + d[3]!) * q + 1);
  } else if (p <= 1 - low) {
    const q = p - 0.5;
    const r = q * q;
    x = ((((((a[0]! * r + a[1]!) * r + a[2]!) * r + a[3]!) * r + a[4]!) * r + a[5]!) * q) /
      (((((b[0]! * r + b[1]!) * r + b[2]!) * r + b[3]!) * r + b[4]!) * r + 1);
  } else {
    const q = Math.sqrt(-2 * Math.log1p(-p));
    x = -(((((c[0]! * q + c[1]!) * q + c[2]!) * q + c[3]!) * q + c[4]!) * q + c[5]!) / ((((d[0]! * q + d[1]!) * q + d[2]!) * q + d[3]!) * q + 1);
  }
  const e = normalCdf(x) - p;
  const u = e * Math.sqrt(2 * Math.PI) * Math.exp((x * x) / 2);
  return x - u / (1 + (x * u) / 2);
}

/** Two-sided tail probability P(|T| >= |t|) of Student's t with df degrees of freedom (df real, > 0). */
export function studentTTwoSided(t: number, df: number): number {
  if (!Number.isFinite(t)) return 0;
  return incompleteBeta(df / (df + t * t), df / 2, 0.5);
}

/** Student t CDF. */
export function studentTCdf(t: number, df: number): number {
  const tail = studentTTwoSided(t, df) / 2;
  return t >= 0 ? 1 - tail : tail;
}

/** Student t quantile, by bisection on the CDF (a few dozen CDF evaluations). */
export function studentTQuantile(p: number, df: number): number {
  if (p <= 0) return -Infinity;
  if (p >= 1) return Infinity;
  if (p < 0.5) return -studentTQuantile(1 - p, df);
  let low = 0;
  let high = Math.max(1, normalQuantile(p));
  while (studentTCdf(high, df) < p) {
    low = high;
    high *= 2;
  }
  for (let i = 0; i < 200 && high - low > 1e-13 * high; i++) {
    const mid = (low + high) / 2;
    if (studentTCdf(mid, df) < p) low = mid;
    else high = mid;
  }
  return (low + high) / 2;
}

/** Upper tail of the chi-square distribution with k degrees of freedom. */
export function chiSquareSurvival(x: number, k: number): number {
  return incompleteGamma(k / 2, x / 2).q;
}

/** Pooled two-proportion z-test of x2/n2 against x1/n1, two-sided. */
export function twoProportionZTest(x1: number, n1: number, x2: number, n2: number): { z: number; pValue: number } {
  if (n1 === 0 || n2 === 0) return { z: 0, pValue: 1 };
  const pooled = (x1 + x2) / (n1 + n2);
  const se = Math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2));
  if (se === 0) return { z: 0, pValue: 1 };
  const z = (x2 / n2 - x1 / n1) / se;
  return { z, pValue: erfc(Math.abs(z) / Math.SQRT2) };
}

/** Summary of a sample: size, mean and unbiased variance. */
export interface Sample {
  n: number;
  mean: number;
  variance: number;
}

/** Summary from a count, a sum and a sum of squares. */
export function sampleOf(n: number, sum: number, sumOfSquares: number): Sample {
  if (n === 0) return { n, mean: 0, variance: 0 };
  const mean = sum / n;
  const variance = n > 1 ? Math.max(0, (sumOfSquares - sum * mean) / (n - 1)) : 0;
  return { n, mean, variance };
}

/** Welch's t-test of b's mean against a's, two-sided, with Welch–Satterthwaite degrees of freedom. */
export function welchTTest(a: Sample, b: Sample): { t: number; df: number; pValue: number } {
  if (a.n < 2 || b.n < 2) return { t: 0, df: 0, pValue: 1 };
  const va = a.variance / a.n;
  const vb = b.variance / b.n;
  const se2 = va + vb;
  const diff = b.mean - a.mean;
  if (se2 === 0) return { t: diff === 0 ? 0 : Math.sign(diff) * Infinity, df: a.n + b.n - 2, pValue: diff === 0 ? 1 : 0 };
  const t = diff / Math.sqrt(se2);
  const df = (se2 * se2) / ((va * va) / (a.n - 1) + (vb * vb) / (b.n - 1));
  return { t, df, pValue: studentTTwoSided(t, df) };
}

/** Wilson score interval of a proportion x/n at confidence 1 - alpha. */
export function wilsonInterval(x: number, n: number, alpha: number): [number, number] {
  if (n === 0) return [0, 1];
  const z = normalQuantile(1 - alpha / 2);
  const p = x / n;
  const z2n = (z * z) / n;
  const center = (p + z2n / 2) / (1 + z2n);
  const half = (z / (1 + z2n)) * Math.sqrt((p * (1 - p)) / n + (z * z) / (4 * n * n));
  return [Math.max(0, center - half), Math.min(1, center + half)];
}

/** Student-t interval of a mean at confidence 1 - alpha; unbounded below 2 observations. */
export function meanInterval(sample: Sample, alpha: number): [number, number] {
  if (sample.n < 2) return [-Infinity, Infinity];
  const half = studentTQuantile(1 - alpha / 2, sample.n - 1) * Math.sqrt(sample.variance / sample.n);
  return [sample.mean - half, sample.mean + half];
}

/**
 * Chi-square goodness of fit of observed counts to expected weights (normalized),
 * over the categories with a non-zero weight: k - 1 degrees of freedom.
 */
export function chiSquareGoodnessOfFit(observed: number[], weights: number[]): { chiSquare: number; df: number; pValue: number } {
  const used = observed.map((o, i) => ({ o, w: weights[i] ?? 0 })).filter(({ w }) => w > 0);
  const total = used.reduce((s, { o }) => s + o, 0);
  const weightSum = used.reduce((s, { w }) => s + w, 0);
  if (used.length < 2 || total === 0) return { chiSquare: 0, df: Math.max(0, used.length - 1), pValue: 1 };
  const chiSquare = used.reduce((s, { o, w }) => {
    const expected = (total * w) / weightSum;
    return s + ((o - expected) * (o - expected)) / expected;
  }, 0);
  const df = used.length - 1;
  return { chiSquare, df, pValue: chiSquareSurvival(chiSquare, df) };
}

/**
 * Always-valid p-value of the difference of means b - a: the mixture sequential
 * probability ratio test with a normal mixture N(0, tau^2) over the difference
 * (Johari, Koomen, Pekelis, Walsh, "Always valid inference", 2017/2022), with the
 * variances plugged in. tau is in units of the pooled standard deviation (a
 * standardized effect size). p = min(1, 1 / Lambda) stays valid however often it is
 * computed and whenever one stops.
 */
export function msprtPValue(a: Sample, b: Sample, tau: number): number {
  if (a.n < 2 || b.n < 2) return 1;
  const v = a.variance / a.n + b.variance / b.n;
  const pooled = ((a.n - 1) * a.variance + (b.n - 1) * b.variance) / (a.n + b.n - 2);
  const tau2 = tau * tau * pooled;
  if (v === 0 || tau2 === 0) return 1;
  const diff = b.mean - a.mean;
  const logLambda = 0.5 * Math.log(v / (v + tau2)) + (tau2 * diff * diff) / (2 * v * (v + tau2));
  return Math.min(1, Math.exp(-logLambda));
}
