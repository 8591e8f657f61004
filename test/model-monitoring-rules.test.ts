// The model-monitoring rules (observability/rules/model-monitoring.yml) pass promtool
// and their unit tests, and read only metrics the prediction service registers.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parse } from "yaml";
import { describe, expect, it } from "vitest";
import { runCommand } from "../scripts/lib/processes.js";
import { ROOT, TOOLS_BIN } from "../scripts/lib/tools.js";
import { registry } from "../services/kit/index.js";
import "../services/prediction/drift.js";
import "../services/prediction/model-age.js";
import "../services/prediction/online-accuracy.js";

const promtool = join(TOOLS_BIN, "promtool");
if (!existsSync(promtool)) throw new Error("promtool is missing: run `node scripts/install-k8s-tools.mjs` (part of npm run setup)");
const dir = join(ROOT, "observability", "rules");
const rules = parse(readFileSync(join(dir, "model-monitoring.yml"), "utf8")).groups.flatMap((g: { rules: Record<string, string>[] }) => g.rules) as Record<string, string>[];

describe("model-monitoring rules", () => {
  it("pass promtool check rules", async () => {
    const { code, stdout, stderr } = await runCommand(promtool, ["check", "rules", join(dir, "model-monitoring.yml")], 60_000);
    expect(stdout + stderr).toContain("SUCCESS: 3 rules found");
    expect(code).toBe(0);
  });

  it("fire and stay quiet as their unit tests expect (promtool test rules)", async () => {
    const { code, stdout, stderr } = await runCommand(promtool, ["test", "rules", join(dir, "model-monitoring.test.yml")], 60_000);
    expect(stdout + stderr).toContain("SUCCESS");
    expect(code).toBe(0);
  });

  it("alert on drift, age and online accuracy, each with a firing unit test", () => {
    const alerts = rules.map((r) => r.alert);
    expect(alerts).toEqual(["RecsysFeatureDrift", "RecsysModelTooOld", "RecsysOnlineAccuracyLow"]);
    const tests = parse(readFileSync(join(dir, "model-monitoring.test.yml"), "utf8")).tests as { alert_rule_test: { alertname: string; exp_alerts: unknown[] }[] }[];
    const fired = new Set(tests.flatMap((t) => t.alert_rule_test.filter((a) => a.exp_alerts.length > 0).map((a) => a.alertname)));
    expect(alerts.filter((a) => !fired.has(a!))).toEqual([]);
  });

  it("read only metrics the prediction service registers", async () => {
    const registered = new Set((await registry.getMetricsAsJSON()).map((m) => m.name));
    const read = rules.flatMap((r) => [...r.expr!.matchAll(/\b(recsys_[a-z0-9_]+)\b/g)].map((m) => m[1]!));
    expect(read.length).toBeGreaterThan(0);
    expect(read.filter((name) => !registered.has(name))).toEqual([]);
  });
});
