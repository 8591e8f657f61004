// A master of a 6-node Redis Cluster killed (SIGKILL) while the feature service takes
// events: its replica takes over, every event the service accepted is counted exactly
// once (none lost with the dead master, none twice from the resends), and reads of the
// dead master's slots answer again within seconds. With INGEST_REPLICA_ACKS, a batch is
// accepted only once a replica holds it (WAIT), so a master dying right after answering
// cannot take it along.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventType } from "../gen/recsys/common/v1/common_pb.js";
import { EventSchema, FeatureService } from "../gen/recsys/feature/v1/feature_pb.js";
import { waitClusterHealthy } from "../scripts/lib/redis-cluster.js";
import { appendEvents } from "../services/feature/ingest.js";
import { partitionOf, streamKey } from "../services/feature/keys.js";
import { featureScripts } from "../services/feature/lua.js";
import { createRedis, waitUntilReady } from "../services/kit/redis.js";
import { createServiceClient, type RunningServer } from "../services/kit/index.js";
import { startFeatureService } from "../services/feature/server.js";
import { event, eventually, readOne, serving } from "../services/feature/test/helpers.js";
import { startTestCluster, type TestCluster } from "./support/redis-cluster.js";

const PARTITIONS = 6;
const ITEMS = Array.from({ length: 60 }, (_, i) => `fo-item-${i}`);
const WRITERS = 4;
const BATCH = 10;

describe("feature service on a Redis Cluster when a master dies under load", () => {
  let cluster: TestCluster;
  let server: RunningServer;
  let client: Client<typeof FeatureService>;

  beforeAll(async () => {
    cluster = await startTestCluster();
    server = await startFeatureService({
      ...cluster.env,
      GRPC_PORT: "0",
      LOG_LEVEL: "silent",
      PARTITIONS: String(PARTITIONS),
      INGEST_REPLICA_ACKS: "1",
      // A crowded machine's Redis; a failover itself is bounded by the retries, not by this.
      REDIS_COMMAND_TIMEOUT_MS: "2000",
      // Every read goes to Redis: the test is about Redis answering again.
      CACHE_MAX_ENTITIES: "0",
    });
    client = createServiceClient(FeatureService, `127.0.0.1:${server.port}`);
    await serving(server.port, 30_000);
  });
  afterAll(async () => {
    await server?.shutdown();
    await cluster?.stop();
  });

  it("loses no accepted event, counts none twice, reads recover within seconds, and accepts a batch only once a replica has it", async () => {
    const now = Date.now();
    // The partition whose master dies, and an item whose state lives there.
    const victimPartition = 0;
    const victimItem = ITEMS.find((id) => partitionOf(id, PARTITIONS) === victimPartition)!;
    const victimPort = await cluster.masterOf(streamKey(victimPartition));

    const clicksPerItem = new Map<string, number>();
    const failures = new Map<Code, number>();
    let accepted = 0;
    let killed = false;
    let stop = false;
    // Each writer sends its batches in turn and resends a failed one (same event ids)
    // until it is accepted, as a client of IngestEvents should.
    const writer = async (w: number) => {
      for (let b = 0; !stop; b++) {
        const events = Array.from({ length: BATCH }, (_, i) => {
          const item = ITEMS[(w * 7 + b * BATCH + i) % ITEMS.length]!;
          return event(`fo-${w}-${b}-${i}`, `fo-user-${i}`, item, EventType.CLICK, now, 0);
        });
        for (;;) {
          try {
            const counts = await client.ingestEvents({ events }, { timeoutMs: 15_000 });
            expect(counts.accepted + counts.duplicates).toBe(BATCH);
            break;
          } catch (err) {
            const code = ConnectError.from(err).code;
            failures.set(code, (failures.get(code) ?? 0) + 1);
            await new Promise((r) => setTimeout(r, 100));
          }
        }
        for (const e of events) clicksPerItem.set(e.itemId!, (clicksPerItem.get(e.itemId!) ?? 0) + 1);
        accepted += BATCH;
        if (killed && accepted >= 2_000) stop = true;
      }
    };
    const writers = Promise.all(Array.from({ length: WRITERS }, (_, w) => writer(w)));

    await eventually(async () => expect(accepted).toBeGreaterThanOrEqual(300), 60_000);
    const node = cluster.cluster.nodes.find((n) => n.port === victimPort)!;
    await node.process.stop("SIGKILL");
    const killedAt = Date.now();
    killed = true;

    // Reads of the dead master's slots: failing for a while (or not at all, if the
    // replica is promoted between two reads), then answering again.
    let recoveredAfterMs: number | undefined;
    while (recoveredAfterMs === undefined) {
      try {
        await readOne(client, "item", victimItem, ["item_stream:clicks_1h"]);
        recoveredAfterMs = Date.now() - killedAt;
      } catch (err) {
        expect(ConnectError.from(err).code).toBe(Code.Unavailable);
        expect(Date.now() - killedAt).toBeLessThan(30_000);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    // With INGEST_REPLICA_ACKS a batch is accepted only once a replica holds it: the
    // promoted master has none while the old one is down, so the victim partition's
    // batches are refused (the writers keep resending them) until it rejoins as a replica.
    const redis = createRedis(cluster.env, { commandTimeoutMs: 5_000, scripts: featureScripts });
    const direct: string[] = [];
    try {
      await waitUntilReady(redis, 10_000);
      const batch = (name: string) => [create(EventSchema, event(name, "acks-user", victimItem, EventType.CLICK, now, 0))];
      const durable = { replicaAcks: 1, waitMs: 500 };
      await expect(appendEvents(redis, batch("acks-1"), PARTITIONS, 3_600, durable)).rejects.toThrow(/0 of 1 replicas acknowledged/);
      expect(await appendEvents(redis, batch("acks-2"), PARTITIONS, 3_600)).toEqual({ accepted: 1, duplicates: 0 });

      await cluster.cluster.restart(victimPort);
      await waitClusterHealthy(cluster.cluster.nodes.map((n) => n.port), 60_000);
      // acks-1 reached the master before its WAIT failed: the resend is a duplicate, now replicated.
      expect(await appendEvents(redis, batch("acks-1"), PARTITIONS, 3_600, durable)).toEqual({ accepted: 0, duplicates: 1 });
      expect(await appendEvents(redis, batch("acks-3"), PARTITIONS, 3_600, durable)).toEqual({ accepted: 1, duplicates: 0 });
      direct.push("acks-1", "acks-2", "acks-3");
    } finally {
      redis.disconnect();
    }

    await writers;
    // The failover was real: the victim's slots are served by another node now.
    expect(await cluster.masterOf(streamKey(victimPartition))).not.toBe(victimPort);
    // Refusals during the failover were UNAVAILABLE, never anything a client must not resend.
    expect([...failures.keys()].filter((code) => code !== Code.Unavailable)).toEqual([]);

    // Every accepted click counted exactly once, per item (the three sent directly too).
    clicksPerItem.set(victimItem, (clicksPerItem.get(victimItem) ?? 0) + direct.length);
    await eventually(async () => {
      for (const item of ITEMS) {
        const { values } = await readOne(client, "item", item, ["item_stream:clicks_1h"]);
        expect(values["item_stream:clicks_1h"] ?? 0, item).toBe(clicksPerItem.get(item) ?? 0);
      }
    }, 60_000);
    const total = [...clicksPerItem.values()].reduce((a, b) => a + b, 0);
    expect(total).toBe(accepted + direct.length);
    console.info(`failover: ${accepted} events accepted, ${[...failures.values()].reduce((a, b) => a + b, 0)} refused attempts (resent), reads of the dead master's slots back after ${recoveredAfterMs} ms`);
    expect(recoveredAfterMs).toBeLessThan(30_000);
  }, 300_000);
});
