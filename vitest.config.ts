import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["services/**/test/**/*.test.ts", "test/**/*.test.ts"],
    // Tests start real servers, Redis and Envoy: generous timeouts, at most two
    // files at once on a 2-core machine.
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: "forks",
    maxWorkers: 2,
    reporters: ["default"],
  },
});
