// The project's clients against the whole mesh, as `npm start` runs it: the
// examples in examples/ (grpc-js with a service config, Connect from Node, grpcurl
// and ghz recipes) and the browser console in web/, driven in Chromium over both
// browser protocols (gRPC-web and Connect) through the edge. Saves docs/console.png.
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chromium, type Browser, type Page } from "playwright-core";
import { Code, ConnectError } from "@connectrpc/connect";
import { EchoService } from "../../gen/recsys/echo/v1/echo_pb.js";
import { setRuntime, stat, stats } from "../../scripts/lib/envoy-admin.js";
import { startMesh, type Mesh } from "../../scripts/lib/mesh.js";
import { ROOT } from "../../scripts/lib/tools.js";
import { startWebConsole, type ConsoleStats, type WebConsole } from "../../scripts/lib/web.js";
import { edgeClient, edgeTokenMinter } from "../support/tokens.js";
import { predictAnswers } from "../support/predict-answers.js";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const SCREENSHOT = join(ROOT, "docs", "console.png");
const PHONE_SCREENSHOT = join(ROOT, "docs", "console-phone.png");

let mesh: Mesh;
let web: WebConsole;
let browser: Browser;

beforeAll(async () => {
  // Before the mesh: a missing browser fails in a second, saying what to do.
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install chromium, or set CHROMIUM_PATH to a Chromium binary`);
  mesh = await startMesh({ env: { LOG_LEVEL: "warn" } });
  const metricsUrls = Object.fromEntries(mesh.instances.filter((i) => i.service === "prediction").map((i) => [i.version, `http://127.0.0.1:${i.metricsPort}/metrics`]));
  web = await startWebConsole({ edgeUrl: `http://${mesh.edge}`, edgeAdmin: mesh.edgeAdmin, metricsUrls });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});
afterAll(async () => {
  await browser?.close();
  await web?.stop();
  await mesh?.stop();
});

/** Runs a command from the repository's root; never throws on a non-zero exit. */
function run(command: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(command, args, { cwd: ROOT, timeout: 60_000, env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === "number" ? err.code : 1) : 0, stdout, stderr });
    });
  });
}
const example = (file: string, args: string[]) => run("node", ["--import", "tsx", join("examples", file), ...args]);

const fallbackNames = ["FALLBACK_LEVEL_PRIMARY", "FALLBACK_LEVEL_CACHED", "FALLBACK_LEVEL_SIMPLIFIED", "FALLBACK_LEVEL_POPULAR", "FALLBACK_LEVEL_STATIC"];

interface JsonAnswer {
  predictions: { itemId: string; score: number; rank: number }[];
  metadata: { traceId: string; fallbackLevel: string; variant: string };
}

function expectRanked(answer: JsonAnswer, count: number) {
  expect(answer.predictions).toHaveLength(count);
  expect(answer.predictions.map((p) => p.rank)).toEqual(Array.from({ length: count }, (_, i) => i + 1));
  for (const p of answer.predictions) {
    expect(p.itemId).toMatch(/\S/);
    expect(Number.isFinite(p.score)).toBe(true);
  }
  expect(fallbackNames).toContain(answer.metadata.fallbackLevel);
}

const answers = (version: string) => predictAnswers(mesh, version);

/** Until neither prediction version is ejected at the edge. */
async function noEjections(timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const s = await stats(mesh.edgeAdmin, "^cluster\\.prediction-v[12]\\.outlier_detection\\.ejections_active$");
    if ([...s.values()].every((v) => v === 0)) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`a prediction version is still ejected at the edge after ${timeoutMs} ms`);
}

describe("client examples, through the edge", () => {
  it("grpc-js with proto-loader and a service config gets ranked items", async () => {
    const { code, stdout, stderr } = await example("predict-grpc-js.ts", ["--addr", mesh.edge, "--user", "u000004", "--count", "5", "--json"]);
    expect(code, stderr).toBe(0);
    const answer = JSON.parse(stdout) as JsonAnswer;
    expectRanked(answer, 5);
    expect(answer.metadata.traceId).toMatch(/^[0-9a-f]{32}$/);
  });

  it("grpc-js retries UNAVAILABLE as its service config says: 3 attempts, then the error", async () => {
    const sidecars = mesh.instances.filter((i) => i.service === "prediction").map((i) => `http://127.0.0.1:${i.sidecarAdminPort}`);
    const before = await stat(mesh.edgeAdmin, "http.edge.downstream_rq_total");
    await Promise.all(sidecars.map((admin) => setRuntime(admin, { "chaos.abort_percent": 100, "chaos.abort_grpc_status": 14 })));
    try {
      const { code, stderr } = await example("predict-grpc-js.ts", ["--addr", mesh.edge, "--user", "u000005"]);
      expect(code).toBe(1);
      expect(stderr).toMatch(/Predict failed: UNAVAILABLE/);
    } finally {
      await Promise.all(sidecars.map((admin) => setRuntime(admin, { "chaos.abort_percent": 0 })));
    }
    // Each attempt is one downstream request at the edge (the edge's own retries go upstream).
    expect((await stat(mesh.edgeAdmin, "http.edge.downstream_rq_total")) - before).toBe(3);
    await noEjections();
  });

  it("Connect from Node (JSON over HTTP/1.1) gets ranked items, on the version it forces", async () => {
    const before = { v1: await answers("v1"), v2: await answers("v2") };
    const { code, stdout, stderr } = await example("predict-connect.ts", ["--edge", `http://${mesh.edge}`, "--user", "u000006", "--count", "4", "--canary", "v2", "--json"]);
    expect(code, stderr).toBe(0);
    expectRanked(JSON.parse(stdout) as JsonAnswer, 4);
    expect({ v1: await answers("v1"), v2: await answers("v2") }).toEqual({ v1: before.v1, v2: before.v2 + 1 });
  });

  it("Connect answers carry the request's trace id", async () => {
    const { stdout } = await example("predict-connect.ts", ["--edge", `http://${mesh.edge}`, "--user", "u000009", "--json"]);
    expect((JSON.parse(stdout) as JsonAnswer).metadata.traceId).toMatch(/^[0-9a-f]{32}$/);
  });

  it("the grpcurl and ghz recipes run, bounded, and succeed", async () => {
    const { code, stdout, stderr } = await run("bash", [join("examples", "recipes.sh")], { EDGE: mesh.edge, TOOLS: join(ROOT, ".tools", "bin") });
    expect(code, stderr).toBe(0);
    const section = (name: string) => stdout.split(`== ${name}\n`)[1]!.split("\n== ")[0]!;
    expect(section("list")).toContain("recsys.prediction.v1.PredictionService");
    expect(section("describe")).toContain("user_id");
    expect((JSON.parse(section("predict")) as { predictions: unknown[] }).predictions).toHaveLength(5);
    expect(section("canary")).toMatch(/x-service-version: v2/);
    expect(JSON.parse(section("echo"))).toMatchObject({ message: "hello" });
    expect(JSON.parse(section("health"))).toEqual({ status: "SERVING" });
    expect(section("load-predict")).toMatch(/\[OK\]\s+200 responses/);
    expect(section("load-echo")).toMatch(/\[OK\]\s+\d+ responses/);
  });
});

describe("the web console", () => {
  /** Requests the page sends to the edge (not to the console's own server). */
  const edgeRequests: { contentType: string; canary: string | undefined }[] = [];
  let page: Page;

  beforeAll(async () => {
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on("request", (req) => {
      if (req.url().startsWith(`http://${mesh.edge}/`) && req.method() === "POST") {
        edgeRequests.push({ contentType: req.headers()["content-type"] ?? "", canary: req.headers()["x-canary"] });
      }
    });
    await page.goto(web.url);
    await page.waitForSelector("body[data-ready=true]");
  });
  afterAll(() => page?.close());

  const answerFor = async (user: string) => {
    await page.getByRole("status").first().filter({ hasText: `items for ${user}` }).waitFor({ timeout: 20_000 });
  };
  const rows = () => page.locator("#items tbody tr");

  it("labels every control, and Tab walks them in the form's order", async () => {
    const unlabelled = await page.$$eval("input, select", (els) => els.filter((el) => (el as HTMLInputElement).labels?.length === 0).map((el) => el.id || el.outerHTML));
    expect(unlabelled).toEqual([]);
    await page.getByLabel("User").focus();
    const order = [await page.evaluate(() => document.activeElement?.id)];
    for (let i = 0; i < 8; i++) {
      await page.keyboard.press("Tab");
      order.push(await page.evaluate(() => (document.activeElement as HTMLInputElement).id || (document.activeElement as HTMLInputElement).value));
    }
    expect(order).toEqual(["user", "count", "device", "grpc-web", "canary", "bypass", "predict", "items-scroll", "stats-toggle"]);
  });

  it("gets predictions over gRPC-web, from the keyboard, and renders items, metadata and stage timings", async () => {
    await page.getByLabel("User").fill("u000007");
    await page.getByLabel("gRPC-web").check();
    await page.getByRole("button", { name: "Predict" }).focus();
    await page.keyboard.press("Enter");
    await answerFor("u000007");
    expect(edgeRequests.at(-1)?.contentType).toMatch(/^application\/grpc-web/);
    await expect.poll(() => rows().count()).toBe(10);
    const cells = await rows().evaluateAll((trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent ?? "")));
    expect(cells.map((c) => c[0])).toEqual(Array.from({ length: 10 }, (_, i) => String(i + 1)));
    for (const [, item, , score] of cells) {
      expect(item).toMatch(/\S/);
      expect(Number.isFinite(Number(score))).toBe(true);
    }
    expect(await page.locator("#meta-transport").textContent()).toBe("gRPC-web");
    expect(await page.locator("#meta-trace").textContent()).toMatch(/^[0-9a-f]{32}$/);
    expect(["primary", "cached", "simplified", "popular", "static"]).toContain((await page.locator("#meta-fallback").textContent())!.split(" ")[0]);
    expect(["miss", "l1", "l2"]).toContain(await page.locator("#meta-cache").textContent());
    expect(await page.locator("#meta-variant").textContent()).toMatch(/\S/);
    const stages = await page.locator("#stages li").count();
    expect(stages).toBeGreaterThan(0);
    const widths = await page.locator("#stages .bar").evaluateAll((bars) => bars.map((b) => (b as HTMLElement).style.width));
    expect(widths).toContain("100%");
  });

  it("gets predictions over Connect with v2 forced by x-canary, and the edge sends them to v2", async () => {
    const before = { v1: await answers("v1"), v2: await answers("v2") };
    await page.getByLabel("User").fill("u000008");
    await page.getByLabel("Number of items").fill("6");
    await page.getByLabel("Connect (JSON)").check();
    await page.getByLabel("Prediction version (x-canary)").selectOption("v2");
    await page.getByRole("button", { name: "Predict" }).click();
    await answerFor("u000008");
    expect(edgeRequests.at(-1)).toEqual({ contentType: "application/json", canary: "v2" });
    await expect.poll(() => rows().count()).toBe(6);
    expect(await page.locator("#meta-transport").textContent()).toBe("Connect");
    expect({ v1: await answers("v1"), v2: await answers("v2") }).toEqual({ v1: before.v1, v2: before.v2 + 1 });
  });

  it("shows the edge's live figures from the read-only stats endpoint", async () => {
    // A free-tier user (its token's tier; a header could not claim more) bursts past its
    // per-second limit until the edge refuses some, so the rate-limited figure has
    // something to show. Four connections, each at the edge's 100 streams, put 400 calls
    // in flight at once; bounded in rounds, not by a clock.
    const freeUser = (await edgeTokenMinter())(`console-burst-${Date.now()}`, "free");
    const echoes = Array.from({ length: 4 }, () => edgeClient(EchoService, mesh.edge, freeUser));
    let limited = 0;
    for (let round = 0; round < 10 && limited === 0; round++) {
      const refused = await Promise.all(
        echoes.flatMap((echo) =>
          Array.from({ length: 100 }, () =>
            echo.echo({ message: "burst" }, { timeoutMs: 10_000 }).then(
              () => false,
              (e: unknown) => ConnectError.from(e).code === Code.ResourceExhausted,
            ),
          ),
        ),
      );
      limited = refused.filter(Boolean).length;
    }
    expect(limited).toBeGreaterThan(0);
    await expect.poll(() => page.locator("#stats").getAttribute("data-samples").then(Number), { timeout: 15_000 }).toBeGreaterThanOrEqual(2);
    expect(await page.locator("#stat-qps").textContent()).toMatch(/^\d+\.\d$/);
    expect(await page.locator("#stat-weights").textContent()).toBe("v1 100% · v2 0%");
    expect(await page.locator("#stat-fallback").textContent()).toMatch(/^v1 .*% of \d+ · v2 .*% of \d+$/);
    const s = (await (await fetch(`${web.url}/api/stats`)).json()) as ConsoleStats;
    expect(s.edge.reachable).toBe(true);
    expect(s.edge.requests).toBeGreaterThan(0);
    expect(s.edge.rateLimited).toBeGreaterThanOrEqual(limited);
    await expect.poll(() => page.locator("#stat-limited").textContent().then(Number), { timeout: 15_000 }).toBeGreaterThanOrEqual(limited);
    expect(s.edge.errorsByCode.UNAVAILABLE).toBeGreaterThan(0); // the retry test's aborted attempts
    expect(s.prediction.map((p) => [p.version, p.reachable])).toEqual([["v1", true], ["v2", true]]);
    expect(s.prediction.every((p) => p.answers > 0)).toBe(true);
  });

  it("serves only its own paths, read-only", async () => {
    expect((await fetch(`${web.url}/api/stats`, { method: "POST" })).status).toBe(405);
    for (const path of ["/runtime_modify", "/quitquitquit", "/stats", "/..%2Fpackage.json", "/web/src/main.ts"]) {
      expect((await fetch(`${web.url}${path}`)).status, path).toBe(404);
    }
    expect((await fetch(web.url)).headers.get("content-security-policy")).toContain("default-src 'self'");
  });

  it("fits a phone's width without sideways scrolling, and saves screenshots of a full answer", async () => {
    // The picture for docs/: the whole pipeline (cache skipped) over gRPC-web, with its trace id.
    await page.getByLabel("User").fill("u000010");
    await page.getByLabel("gRPC-web").check();
    await page.getByLabel("Prediction version (x-canary)").selectOption("");
    await page.getByLabel("Skip the prediction cache").check();
    await page.getByRole("button", { name: "Predict" }).click();
    await answerFor("u000010");
    expect(await page.locator("#meta-cache").textContent()).toBe("miss");
    expect(await page.locator("#meta-trace").textContent()).toMatch(/^[0-9a-f]{32}$/);
    mkdirSync(join(ROOT, "docs"), { recursive: true });
    await page.setViewportSize({ width: 390, height: 844 });
    expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
    await page.screenshot({ path: PHONE_SCREENSHOT, fullPage: true });
    await page.setViewportSize({ width: 1280, height: 900 });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    for (const file of [SCREENSHOT, PHONE_SCREENSHOT]) {
      const png = readFileSync(file);
      expect(png.subarray(1, 4).toString(), file).toBe("PNG");
      expect(png.length, file).toBeGreaterThan(20_000);
    }
  });
});
