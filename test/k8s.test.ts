// The Kubernetes manifests: k8s/base rendered from the topology, both overlays built
// with kustomize and validated against the Kubernetes API schemas, and the rules
// every workload must follow checked on what kustomize actually outputs.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { parse, parseAllDocuments } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { edgeIdentity, meshIdentities } from "../envoy/security.js";
import { instances, podPorts, services } from "../envoy/topology.js";
import { renderPkiSecrets } from "../k8s/pki-secrets.js";
import { ENVOY_IMAGE, ENVOY_STATS_PORT, MONITORING_NAMESPACE, NAMESPACE, PKI_ROOT, REDIS_CLIENT_LABEL, SECRETS, pkiSecrets, staleBaseFiles } from "../k8s/render.js";
import { jobs } from "../k8s/workloads.js";
import { ensurePki } from "../scripts/lib/pki.js";
import { renderRateLimitConfig } from "../scripts/lib/ratelimit.js";
import { freePort, runCommand, startProcess, type Started } from "../scripts/lib/processes.js";
import { waitClusterHealthy } from "../scripts/lib/redis-cluster.js";
import { ROOT, TOOLS_BIN, tool } from "../scripts/lib/tools.js";
import { baseConfigShape, loadConfig } from "../services/kit/index.js";
import { experimentConfigShape } from "../services/experiment/config.js";
import { featureConfigShape } from "../services/feature/config.js";
import { predictionConfigShape } from "../services/prediction/config.js";
import { retrievalConfigShape } from "../services/retrieval/config.js";
import { writeWithPki } from "./support/rendered-pki.js";

const configShapes: Record<string, Record<string, unknown>> = {
  prediction: predictionConfigShape,
  feature: featureConfigShape,
  retrieval: retrievalConfigShape,
  experiment: experimentConfigShape,
  echo: baseConfigShape,
};

/** The oldest Kubernetes the manifests target: native sidecars and preStop sleep are GA or on by default. */
const KUBERNETES_VERSION = "1.33";
/** The in-cluster Redis Cluster's client port and cluster bus (components/redis-cluster). */
const REDIS_CLUSTER_PORT = 6379;
const REDIS_CLUSTER_BUS_PORT = 16379;
const kustomize = join(TOOLS_BIN, "kustomize");
const validator = join(ROOT, ".tools", "venv", "bin", "kubernetes-validate");
for (const path of [kustomize, validator]) {
  if (!existsSync(path)) throw new Error(`${relative(ROOT, path)} is missing: run \`node scripts/install-k8s-tools.mjs\` (part of npm run setup)`);
}

// Loose shapes of what kustomize outputs; the schema validation below is the strict check.
type Obj = Record<string, any>;
interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  spec?: Obj;
  data?: Record<string, string>;
  automountServiceAccountToken?: boolean;
}

const overlays = ["dev", "prod", "dev-cluster"] as const;
const built = Object.fromEntries(
  await Promise.all(
    overlays.map(async (overlay) => {
      const { code, stdout, stderr } = await runCommand(kustomize, ["build", `k8s/overlays/${overlay}`]);
      if (code !== 0) throw new Error(`kustomize build k8s/overlays/${overlay} failed:\n${stderr}`);
      return [overlay, { text: stdout, objects: parseAllDocuments(stdout).map((d) => d.toJS() as K8sObject) }] as const;
    }),
  ),
) as Record<(typeof overlays)[number], { text: string; objects: K8sObject[] }>;

const work = mkdtempSync(join(tmpdir(), "k8s-test-"));
// Envoy opens the certificate, CA and JWKS files a config names, even to validate it.
const pkiDir = join(work, "pki");
beforeAll(() => ensurePki({ dir: pkiDir }), 60_000);
afterAll(() => rmSync(work, { recursive: true, force: true }));

const instanceId = (name: string, version: string) => instances.find((i) => i.service.name === name && i.version === version)!.id;
/** The TypeScript source of a compiled path the images run (services/x/server.js). */
const sourceOf = (compiled: string) => compiled.replace(/\.js$/, ".ts");
const envoyFile = (id: string) => readFileSync(join(ROOT, "envoy", "k8s", id === "edge" ? "edge.yaml" : `sidecar-${id}.yaml`), "utf8");

/** Every container of a pod spec, init containers (the Envoy sidecar, job steps) included. */
function containers(pod: Obj): Obj[] {
  return [...(pod.initContainers ?? []), ...pod.containers];
}

function matches(selector: Obj | undefined, labels: Record<string, string>): boolean {
  if (!selector) return false;
  const byLabels = Object.entries(selector.matchLabels ?? {}).every(([k, v]) => labels[k] === v);
  const byExpressions = (selector.matchExpressions ?? []).every((e: Obj) =>
    e.operator === "In" ? e.values.includes(labels[e.key]) : e.operator === "NotIn" ? !e.values.includes(labels[e.key]) : e.operator === "Exists" ? e.key in labels : !(e.key in labels),
  );
  return byLabels && byExpressions;
}

interface Endpoint {
  namespace: string;
  labels: Record<string, string>;
}

/**
 * NetworkPolicy semantics for one TCP/UDP connection: allowed when the source's
 * egress and the destination's ingress both allow it. A pod no policy selects for a
 * direction is open in that direction; a selected pod only accepts what some rule allows.
 */
function connectionAllowed(policies: K8sObject[], from: Endpoint, to: Endpoint, port: number, protocol = "TCP"): boolean {
  const peerMatches = (peer: Obj, policyNamespace: string, other: Endpoint) => {
    const namespaceOk = peer.namespaceSelector ? matches(peer.namespaceSelector, { "kubernetes.io/metadata.name": other.namespace }) : other.namespace === policyNamespace;
    const podOk = peer.podSelector ? matches(peer.podSelector, other.labels) : true;
    return namespaceOk && podOk;
  };
  const portMatches = (rule: Obj) => !rule.ports || rule.ports.some((p: Obj) => p.port === port && (p.protocol ?? "TCP") === protocol);
  const side = (self: Endpoint, other: Endpoint, type: "Ingress" | "Egress") => {
    const selecting = policies.filter((p) => p.metadata.namespace === self.namespace && p.spec!.policyTypes.includes(type) && matches(p.spec!.podSelector, self.labels));
    if (selecting.length === 0) return true;
    const key = type === "Ingress" ? "ingress" : "egress";
    const peers = type === "Ingress" ? "from" : "to";
    return selecting.some((p) => (p.spec![key] ?? []).some((rule: Obj) => portMatches(rule) && (!rule[peers] || rule[peers].some((peer: Obj) => peerMatches(peer, p.metadata.namespace!, other)))));
  };
  return side(from, to, "Egress") && side(to, from, "Ingress");
}

describe("k8s/base", () => {
  it("is rendered from envoy/topology.ts and k8s/workloads.ts, up to date (npx tsx k8s/render.ts)", () => {
    expect(staleBaseFiles()).toEqual([]);
  });
});

describe.each(overlays)("overlay %s", (overlay) => {
  const { text, objects } = built[overlay];
  const ofKind = (kind: string) => objects.filter((o) => o.kind === kind);
  const named = (kind: string, name: string) => {
    const found = objects.find((o) => o.kind === kind && o.metadata.name === name);
    if (!found) throw new Error(`no ${kind} ${name} in the ${overlay} build`);
    return found;
  };
  const deployments = ofKind("Deployment");
  const podTemplates: { kind: string; name: string; pod: Obj; labels: Record<string, string> }[] = [
    ...deployments.map((d) => ({ kind: "Deployment", name: d.metadata.name, pod: d.spec!.template.spec, labels: d.spec!.template.metadata.labels })),
    ...ofKind("StatefulSet").map((s) => ({ kind: "StatefulSet", name: s.metadata.name, pod: s.spec!.template.spec, labels: s.spec!.template.metadata.labels })),
    ...ofKind("Job").map((j) => ({ kind: "Job", name: j.metadata.name, pod: j.spec!.template.spec, labels: j.spec!.template.metadata.labels })),
    ...ofKind("CronJob").map((j) => ({ kind: "CronJob", name: j.metadata.name, pod: j.spec!.jobTemplate.spec.template.spec, labels: j.spec!.jobTemplate.spec.template.metadata.labels })),
  ];

  it(`validates against the Kubernetes ${KUBERNETES_VERSION} schemas, strictly (an unknown field fails)`, async () => {
    const file = join(work, `${overlay}.yaml`);
    writeFileSync(file, text);
    const { code, stdout, stderr } = await runCommand(validator, ["--strict", "-k", KUBERNETES_VERSION, file], 60_000);
    const output = stdout + stderr;
    expect(output).not.toMatch(/ERROR|WARN/);
    expect(code).toBe(0);
    // Every object was checked against a schema (none skipped as unknown).
    expect(output.match(/passed for resource/g)?.length).toBe(objects.length);
  });

  it("puts everything in the recsys namespace", () => {
    expect(objects.filter((o) => o.kind !== "Namespace" && o.metadata.namespace !== NAMESPACE).map((o) => `${o.kind}/${o.metadata.name}`)).toEqual([]);
    expect(named("Namespace", NAMESPACE).metadata.labels).toMatchObject({ "pod-security.kubernetes.io/enforce": "restricted" });
  });

  it("runs a Deployment and a headless Service per topology instance, the edge, and the rate limit service", () => {
    expect(deployments.map((d) => d.metadata.name).sort()).toEqual([...instances.map((i) => i.id), "edge", "ratelimit"].sort());
    for (const { service, version, id } of instances) {
      const svc = named("Service", id);
      expect(svc.spec!.clusterIP, id).toBe("None");
      expect(svc.spec!.ports).toEqual([{ name: "grpc", port: podPorts.ingress(service.name, version), targetPort: "grpc", appProtocol: "grpc" }]);
      // It selects this instance's pods and no other's.
      const selected = podTemplates.filter((t) => matches({ matchLabels: svc.spec!.selector }, t.labels)).map((t) => t.name);
      expect(selected, id).toEqual([id]);
    }
  });

  it("gives every workload and pod the labels app and version", () => {
    for (const o of [...deployments, ...ofKind("StatefulSet"), ...ofKind("Job"), ...ofKind("CronJob")]) {
      expect(Object.keys(o.metadata.labels ?? {}), `${o.kind}/${o.metadata.name}`).toEqual(expect.arrayContaining(["app", "version"]));
    }
    for (const t of podTemplates) expect(Object.keys(t.labels), `${t.kind}/${t.name}`).toEqual(expect.arrayContaining(["app", "version"]));
  });

  it("locks down every pod and container: own service account without a token, non-root, read-only root, no privilege escalation, no capabilities, seccomp, requests and limits", () => {
    expect(podTemplates.length).toBeGreaterThan(instances.length);
    for (const { kind, name, pod } of podTemplates) {
      const where = `${kind}/${name}`;
      expect(pod.automountServiceAccountToken, where).toBe(false);
      const account = named("ServiceAccount", pod.serviceAccountName);
      expect(account.automountServiceAccountToken, where).toBe(false);
      for (const c of containers(pod)) {
        const at = `${where} container ${c.name}`;
        const effective = (key: string) => c.securityContext?.[key] ?? pod.securityContext?.[key];
        expect(effective("runAsNonRoot"), at).toBe(true);
        expect(effective("runAsUser") ?? 1, at).toBeGreaterThan(0);
        expect(effective("seccompProfile"), at).toEqual({ type: "RuntimeDefault" });
        expect(c.securityContext?.allowPrivilegeEscalation, at).toBe(false);
        expect(c.securityContext?.readOnlyRootFilesystem, at).toBe(true);
        expect(c.securityContext?.capabilities?.drop, at).toEqual(["ALL"]);
        expect(c.securityContext?.capabilities?.add, at).toBeUndefined();
        for (const bound of ["requests", "limits"]) {
          expect(Object.keys(c.resources?.[bound] ?? {}).sort(), `${at} ${bound}`).toEqual(["cpu", "memory"]);
        }
      }
    }
  });

  it.each(instances.map((i) => [i.id, i] as const))("%s: app and Envoy sidecar wired to the rendered sidecar config, with probes", (id, { service, version }) => {
    const deployment = named("Deployment", id);
    const pod = deployment.spec!.template.spec;
    const envoyConfig = parse(envoyFile(id));

    // The sidecar: a native sidecar (starts first, stops last) running the ConfigMap
    // generated from the rendered file, byte for byte.
    const sidecar = pod.initContainers.find((c: Obj) => c.name === "envoy");
    expect(sidecar.restartPolicy).toBe("Always");
    expect(sidecar.image).toMatch(/^envoyproxy\/envoy:v\d+\.\d+\.\d+$/);
    expect(sidecar.args.slice(0, 2)).toEqual(["-c", "/etc/envoy/envoy.yaml"]);
    const mount = sidecar.volumeMounts.find((m: Obj) => m.mountPath === "/etc/envoy");
    const volume = pod.volumes.find((v: Obj) => v.name === mount.name);
    expect(named("ConfigMap", volume.configMap.name).data!["envoy.yaml"]).toBe(envoyFile(id));
    expect(sidecar.ports.find((p: Obj) => p.name === "grpc").containerPort).toBe(envoyConfig.static_resources.listeners.find((l: Obj) => l.name === "ingress").address.socket_address.port_value);
    for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
      expect(sidecar[probe]?.httpGet, `${id} envoy ${probe}`).toEqual({ path: "/ready", port: ENVOY_STATS_PORT });
    }

    // The app: listens where the sidecar's local cluster sends, reaches its upstreams
    // through the sidecar's egress listeners, and is probed over native gRPC health.
    const app = pod.containers.find((c: Obj) => c.name === "app");
    expect([...app.command, ...app.args]).toEqual(["node", "--enable-source-maps", `services/${service.name}/server.js`]);
    expect(existsSync(join(ROOT, sourceOf(app.args[0])))).toBe(true);
    const env = Object.fromEntries(app.env.map((e: Obj) => [e.name, e.value ?? e.valueFrom]));
    const localApp = envoyConfig.static_resources.clusters.find((c: Obj) => c.name === "local_app_grpc");
    const appPort = localApp.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value;
    expect(Number(env.GRPC_PORT)).toBe(appPort);
    expect(env.HOST).toBe("0.0.0.0");
    for (const upstream of service.upstreams) {
      const egress = envoyConfig.static_resources.listeners.find((l: Obj) => l.name === `egress_${upstream}`).address.socket_address;
      expect(env[`${upstream.toUpperCase()}_ADDR`], upstream).toBe(`${egress.address}:${egress.port_value}`);
    }
    expect(Object.keys(env).filter((k) => k.endsWith("_ADDR")).length).toBe(service.upstreams.length);
    if (service.versions.length > 1) expect(env.SERVICE_VERSION).toBe(version);
    expect(app.startupProbe.grpc).toEqual({ port: appPort });
    expect(app.readinessProbe.grpc).toEqual({ port: appPort });
    expect(app.livenessProbe.httpGet).toEqual({ path: "/metrics", port: Number(env.METRICS_PORT) });
    expect(deployment.spec!.template.metadata.annotations).toMatchObject({ "prometheus.io/scrape": "true", "prometheus.io/port": env.METRICS_PORT });
  });

  it.each(instances.map((i) => [i.id, i] as const))("%s: env names are the service's own settings, and they load", (id, { service }) => {
    const app = named("Deployment", id).spec!.template.spec.containers.find((c: Obj) => c.name === "app");
    const shape = configShapes[service.name]!;
    const names: string[] = app.env.map((e: Obj) => e.name);
    expect(names.filter((n) => !(n in shape))).toEqual([]);
    const secrets = ofKind("Secret");
    const env = Object.fromEntries(
      app.env.map((e: Obj) => {
        if (e.value !== undefined) return [e.name, e.value];
        const ref = e.valueFrom.secretKeyRef;
        // dev generates the secrets (kustomize adds a hash suffix); prod expects them created beforehand.
        const secret = secrets.find((s) => s.metadata.name === ref.name);
        expect(Object.values(SECRETS).some((s) => s.name === ref.name.replace(/-[a-z0-9]{10}$/, "") && s.key === ref.key), ref.name).toBe(true);
        const value = secret?.data?.[ref.key];
        // An optional key may be absent (the cluster's nodes, on a single Redis): the variable is then unset.
        if (overlay !== "prod" && !ref.optional) expect(value, `${e.name} from ${ref.name}`).toBeDefined();
        if (!secret) return ref.optional ? [] : [e.name, e.name === "REDIS_URL" ? "rediss://redis.example:6380" : "a-production-token"];
        return value === undefined ? [] : [e.name, Buffer.from(value, "base64").toString()];
      }).filter((entry: string[]) => entry.length > 0),
    );
    expect(() => loadConfig(shape as typeof baseConfigShape, env)).not.toThrow();
  });

  it("resolves every Envoy STRICT_DNS address to a headless Service port (Zipkin aside, in the monitoring namespace)", () => {
    for (const id of [...instances.map((i) => i.id), "edge"]) {
      const clusters = parse(envoyFile(id)).static_resources.clusters.filter((c: Obj) => c.type === "STRICT_DNS" && c.name !== "zipkin");
      const zipkin = parse(envoyFile(id)).static_resources.clusters.find((c: Obj) => c.name === "zipkin");
      expect(zipkin.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address).toBe(`zipkin.${MONITORING_NAMESPACE}.svc.cluster.local`);
      for (const cluster of clusters) {
        for (const { endpoint } of cluster.load_assignment.endpoints[0].lb_endpoints) {
          const { address, port_value } = endpoint.address.socket_address;
          const [name, namespace, ...rest] = address.split(".");
          expect(`${namespace}.${rest.join(".")}`, address).toBe(`${NAMESPACE}.svc.cluster.local`);
          const svc = named("Service", name);
          expect(svc.spec!.clusterIP).toBe("None");
          expect(svc.spec!.ports.map((p: Obj) => p.port)).toContain(port_value);
        }
      }
    }
  });

  it("autoscales every Deployment on CPU and requests per second, and budgets its disruptions", () => {
    const adapter = parse(readFileSync(join(ROOT, "observability", "prometheus-adapter.yaml"), "utf8"));
    const served = adapter.rules.map((r: Obj) => /^(\w+)\{/.exec(r.seriesQuery)![1]!.replace(new RegExp(r.name.matches), r.name.as.replace("${1}", "$1")));
    for (const d of deployments) {
      const name = d.metadata.name;
      const autoscaler = ofKind("HorizontalPodAutoscaler").find((h) => h.spec!.scaleTargetRef.name === name);
      expect(autoscaler?.spec!.scaleTargetRef.kind, name).toBe("Deployment");
      expect(autoscaler!.spec!.minReplicas).toBeGreaterThanOrEqual(1);
      expect(autoscaler!.spec!.maxReplicas).toBeGreaterThan(autoscaler!.spec!.minReplicas);
      const metrics = autoscaler!.spec!.metrics as Obj[];
      const cpu = metrics.find((m) => m.type === "ContainerResource")?.containerResource;
      expect(cpu?.name, name).toBe("cpu");
      expect(containers(d.spec!.template.spec).map((c) => c.name)).toContain(cpu.container);
      // Each serving Deployment also scales on its request rate (ratelimit exports none here).
      const perPod = metrics.find((m) => m.type === "Pods")?.pods;
      if (name === "ratelimit") expect(perPod, name).toBeUndefined();
      else expect(served, name).toContain(perPod?.metric.name);
      // The Deployment leaves the replica count to the autoscaler.
      expect(d.spec!.replicas, name).toBeUndefined();
      const budgets = ofKind("PodDisruptionBudget").filter((p) => matches(p.spec!.selector, d.spec!.template.metadata.labels));
      expect(budgets.length, name).toBe(1);
      expect(budgets[0]!.spec!.maxUnavailable).toBe(1);
    }
  });

  it("allows exactly the mesh's paths through the NetworkPolicies", () => {
    const policies = ofKind("NetworkPolicy");
    const podOf = (app: string, version = "v1"): Endpoint => {
      const found = podTemplates.find((t) => t.labels.app === app && t.labels.version === version);
      if (!found) throw new Error(`no pod template for ${app} ${version}`);
      return { namespace: NAMESPACE, labels: found.labels };
    };
    const ingress = podPorts.ingress("", "");
    const appPort = podPorts.app("", "");
    const prometheus: Endpoint = { namespace: MONITORING_NAMESPACE, labels: { app: "prometheus" } };
    const stranger: Endpoint = { namespace: "default", labels: { app: "curl" } };
    const allowed = (from: Endpoint, to: Endpoint, port: number, protocol?: string) => connectionAllowed(policies, from, to, port, protocol);
    const pods = instances.map((i) => ({ ...i, pod: podOf(i.service.name, i.version) }));

    for (const callee of pods) {
      expect(allowed(podOf("edge"), callee.pod, ingress), `edge -> ${callee.id}`).toBe(true);
      expect(allowed(podOf("edge"), callee.pod, appPort), `edge -> ${callee.id} app port`).toBe(false);
      expect(allowed(stranger, callee.pod, ingress), `other namespace -> ${callee.id}`).toBe(false);
      expect(allowed(prometheus, callee.pod, podPorts.appMetrics("", "")), `prometheus -> ${callee.id} metrics`).toBe(true);
      expect(allowed(prometheus, callee.pod, ENVOY_STATS_PORT), `prometheus -> ${callee.id} envoy stats`).toBe(true);
      expect(allowed(prometheus, callee.pod, appPort), `prometheus -> ${callee.id} app port`).toBe(false);
      for (const caller of pods) {
        const calls = caller.service.upstreams.includes(callee.service.name);
        expect(allowed(caller.pod, callee.pod, ingress), `${caller.id} -> ${callee.id}`).toBe(calls);
        expect(allowed(caller.pod, callee.pod, appPort), `${caller.id} -> ${callee.id} app port`).toBe(false);
      }
      expect(allowed(callee.pod, { namespace: "kube-system", labels: { "k8s-app": "kube-dns" } }, 53, "UDP"), `${callee.id} DNS`).toBe(true);
    }
    for (const job of jobs) {
      for (const callee of pods) {
        expect(allowed(podOf(job.name), callee.pod, ingress), `${job.name} -> ${callee.id}`).toBe(job.upstreams.includes(callee.service.name));
      }
    }
    expect(allowed(stranger, podOf("edge"), podPorts.edge)).toBe(true);
    expect(allowed(prometheus, podOf("edge"), ENVOY_STATS_PORT)).toBe(true);
    // Redis: its clients (and only they) reach it, wherever it runs.
    const redis: Endpoint = overlay === "prod" ? { namespace: "managed-redis", labels: {} } : podOf(overlay === "dev" ? "redis" : "redis-cluster");
    for (const { service, pod } of pods) {
      expect(allowed(pod, redis, 6379), `${service.name} -> redis`).toBe(pod.labels[REDIS_CLIENT_LABEL] === "true");
    }
    expect(allowed(podOf("materialize"), redis, 6379)).toBe(true);
    expect(allowed(podOf("edge"), redis, 6379)).toBe(false);
    // The global rate limit: only the edge asks it; it reaches Redis.
    expect(allowed(podOf("edge"), podOf("ratelimit"), podPorts.rateLimitGrpc)).toBe(true);
    for (const { id, pod } of pods) expect(allowed(pod, podOf("ratelimit"), podPorts.rateLimitGrpc), `${id} -> ratelimit`).toBe(false);
    expect(allowed(stranger, podOf("ratelimit"), podPorts.rateLimitGrpc)).toBe(false);
    expect(allowed(podOf("ratelimit"), redis, 6379)).toBe(true);
    if (overlay === "dev-cluster") {
      // The nodes replicate (6379) and gossip (the cluster bus, 16379) with each other; clients never need the bus.
      for (const port of [REDIS_CLUSTER_PORT, REDIS_CLUSTER_BUS_PORT]) expect(allowed(redis, redis, port), `redis-cluster -> redis-cluster ${port}`).toBe(true);
      for (const { service, pod } of pods) expect(allowed(pod, redis, REDIS_CLUSTER_BUS_PORT), `${service.name} -> cluster bus`).toBe(false);
      expect(allowed(podOf("redis-cluster-bootstrap"), redis, REDIS_CLUSTER_PORT)).toBe(true);
      expect(allowed(stranger, redis, REDIS_CLUSTER_PORT)).toBe(false);
      expect(allowed(redis, podOf("feature"), podPorts.ingress("", ""))).toBe(false);
    }
  });

  it("mounts each Envoy's own certificate and the CA where its config reads them, the JWKS where the edge and the apps read it, and the key nowhere else", () => {
    const envoyPods = [...instances.map((i) => ({ name: i.id, identity: i.service.name })), { name: "edge", identity: edgeIdentity }];
    const jobPods = jobs.filter((j) => j.upstreams.length > 0).map((j) => ({ name: j.name, identity: j.service, config: instanceId(j.service, j.version) }));
    for (const { name, identity, config } of [...envoyPods.map((p) => ({ ...p, config: p.name })), ...jobPods]) {
      const template = podTemplates.find((t) => t.name === name)!;
      const envoyText = envoyFile(config);
      const envoy = containers(template.pod).find((c) => c.name === "envoy")!;
      // The file each mounted Secret provides, at the path the pod sees it.
      const files = (c: Obj) =>
        (c.volumeMounts ?? []).flatMap((m: Obj) => {
          const secret = template.pod.volumes.find((v: Obj) => v.name === m.name)?.secret;
          return secret ? secret.items.map((item: Obj) => ({ secret: secret.secretName as string, path: `${m.mountPath}/${item.path}` })) : [];
        });
      const own = pkiSecrets.identity(identity);
      const sdsPaths = [...envoyText.matchAll(/^\s+path: (\S+\.yaml)$/gm)].map((m) => m[1]!);
      expect(sdsPaths.length, name).toBeGreaterThan(0);
      for (const path of sdsPaths) {
        expect(path.startsWith(`${PKI_ROOT}/`), `${name}: ${path}`).toBe(true);
        expect(files(envoy).map((f: Obj) => f.path), `${name} mounts ${path}`).toContain(path);
      }
      expect(files(envoy).find((f: Obj) => f.secret === own.name)?.path, name).toBe(`${own.mountPath}/${own.key}`);
      const jwks = /filename: (\S+jwks\.json)$/m.exec(envoyText)?.[1];
      if (jwks) expect(files(envoy).map((f: Obj) => f.path), name).toContain(jwks);
      const app = template.pod.containers.find((c: Obj) => c.name === "app");
      if (app && template.kind === "Deployment") {
        const jwksPath = app.env.find((e: Obj) => e.name === "JWKS_PATH")?.value;
        expect(files(app).map((f: Obj) => f.path), name).toEqual([jwksPath]);
      }
      for (const step of containers(template.pod).filter((c) => c.name !== "envoy" && c.name !== "app")) expect(files(step), `${name} ${step.name}`).toEqual([]);
    }
    // No admin secret anywhere: admin calls carry a verified JWT.
    expect(text).not.toMatch(/ADMIN_TOKEN/);
  });

  it("runs the rate limit service on the limits scripts/lib/ratelimit.ts renders, reading them where it looks", () => {
    const pod = named("Deployment", "ratelimit").spec!.template.spec;
    const container = pod.containers[0];
    const env = Object.fromEntries(container.env.map((e: Obj) => [e.name, e.value ?? e.valueFrom]));
    const mount = container.volumeMounts.find((m: Obj) => m.name === "config");
    expect(`${env.RUNTIME_ROOT}/${env.RUNTIME_SUBDIRECTORY}/${env.RUNTIME_APPDIRECTORY}`).toBe(mount.mountPath);
    const configMap = named("ConfigMap", pod.volumes.find((v: Obj) => v.name === "config").configMap.name);
    expect(Object.values(configMap.data!)).toEqual([renderRateLimitConfig()]);
    expect(Number(env.GRPC_PORT)).toBe(podPorts.rateLimitGrpc);
    expect(container.ports.find((p: Obj) => p.name === "grpc").containerPort).toBe(podPorts.rateLimitGrpc);
    expect(env.DEBUG_HOST).toBe("127.0.0.1");
    expect(named("Service", "ratelimit").spec!.clusterIP).toBe("None");
  });

  it("runs the batch jobs with scripts and inputs that exist, through the sidecar when they call upstreams", () => {
    for (const job of jobs) {
      const template = podTemplates.find((t) => t.name === job.name && t.kind === job.kind);
      expect(template, job.name).toBeDefined();
      const steps = containers(template!.pod).filter((c) => c.name !== "envoy");
      expect(steps.map((s) => s.args)).toEqual(job.commands);
      for (const step of steps) {
        expect(step.command).toEqual(["node", "--enable-source-maps"]);
        for (const arg of step.args.filter((a: string) => /\.(js|jsonl)$/.test(a))) expect(existsSync(join(ROOT, sourceOf(arg))), arg).toBe(true);
      }
      const sidecar = template!.pod.initContainers?.find((c: Obj) => c.name === "envoy");
      expect(Boolean(sidecar), job.name).toBe(job.upstreams.length > 0);
      if (sidecar) {
        const volume = template!.pod.volumes.find((v: Obj) => v.name === "envoy-config");
        expect(named("ConfigMap", volume.configMap.name).data!["envoy.yaml"]).toBe(envoyFile(instanceId(job.service, job.version)));
      }
    }
  });
});

describe("Redis Cluster (components/redis-cluster, overlay dev-cluster)", () => {
  const { objects } = built["dev-cluster"];
  const named = (kind: string, name: string) => objects.find((o) => o.kind === kind && o.metadata.name.replace(/-[a-z0-9]{10}$/, "") === name)!;
  const statefulSet = named("StatefulSet", "redis-cluster");
  const pod = statefulSet.spec!.template.spec;
  const node = pod.containers[0];
  const configMap = named("ConfigMap", "redis-cluster");
  const bootstrap = named("Job", "redis-cluster-bootstrap");
  const secret = named("Secret", "recsys-redis");
  const secretValue = (key: string) => Buffer.from(secret.data![key]!, "base64").toString();
  /** The pods' DNS names, as the headless Service gives them. */
  const nodeNames = Array.from({ length: 6 }, (_, i) => `${statefulSet.metadata.name}-${i}.${statefulSet.spec!.serviceName}.${NAMESPACE}.svc.cluster.local:${REDIS_CLUSTER_PORT}`);
  const envOf = (container: Obj) => Object.fromEntries((container.env ?? []).map((e: Obj) => [e.name, e.value ?? e.valueFrom]));

  it("runs 6 nodes on volumes of their own behind a headless Service published before readiness, one down at a time", () => {
    expect(statefulSet.spec!.replicas).toBe(6);
    const service = named("Service", statefulSet.spec!.serviceName);
    expect(service.spec!.clusterIP).toBe("None");
    expect(service.spec!.publishNotReadyAddresses).toBe(true);
    expect(service.spec!.ports.map((p: Obj) => p.port)).toEqual([REDIS_CLUSTER_PORT, REDIS_CLUSTER_BUS_PORT]);
    const claim = statefulSet.spec!.volumeClaimTemplates[0].metadata.name;
    expect(node.volumeMounts.find((m: Obj) => m.name === claim).mountPath).toBe("/data");
    const budgets = objects.filter((o) => o.kind === "PodDisruptionBudget" && matches(o.spec!.selector, statefulSet.spec!.template.metadata.labels));
    expect(budgets.map((b) => b.spec!.maxUnavailable)).toEqual([1]);
    // The single Redis of overlays/dev is gone.
    expect(objects.filter((o) => o.metadata.name === "redis").map((o) => o.kind)).toEqual([]);
  });

  it("configures cluster mode, append-only persistence, and hostnames that survive a reschedule", () => {
    const conf = Object.fromEntries(configMap.data!["redis.conf"]!.split("\n").filter((l) => /^[a-z]/.test(l)).map((l) => [l.split(" ")[0], l.slice(l.indexOf(" ") + 1)]));
    expect(conf).toMatchObject({ "cluster-enabled": "yes", "cluster-node-timeout": "5000", appendonly: "yes", "cluster-preferred-endpoint-type": "hostname", port: String(REDIS_CLUSTER_PORT) });
    expect(node.command).toEqual(["sh", "/etc/redis-cluster/start-node.sh"]);
    const env = envOf(node);
    // Each node announces its own pod DNS name, the one the seeds list.
    const announced = nodeNames.map((_, i) => `${env.ANNOUNCE_HOSTNAME.replace("$(POD_NAME)", `${statefulSet.metadata.name}-${i}`).replace("$(POD_NAMESPACE)", NAMESPACE)}:${REDIS_CLUSTER_PORT}`);
    expect(announced).toEqual(nodeNames);
    expect(env.POD_IP).toEqual({ fieldRef: { fieldPath: "status.podIP" } });
  });

  it("points every Redis client at the cluster: the apps and jobs by REDIS_CLUSTER_NODES, the rate limit service in cluster mode", () => {
    expect(secretValue(SECRETS.redisClusterNodes.key)).toBe(nodeNames.join(","));
    const clients = objects.flatMap((o) => {
      const template = o.kind === "CronJob" ? o.spec!.jobTemplate.spec.template.spec : o.spec?.template?.spec;
      return template ? containers(template).filter((c) => envOf(c).REDIS_URL && c.name !== "ratelimit").map((c) => ({ at: `${o.metadata.name} ${c.name}`, env: envOf(c) })) : [];
    });
    // Every app with Redis, and every job step.
    expect(clients.length).toBeGreaterThanOrEqual(instances.filter((i) => i.service.name !== "echo").length + 3);
    for (const { at, env } of clients) expect(env.REDIS_CLUSTER_NODES?.secretKeyRef, at).toMatchObject({ name: secret.metadata.name, key: SECRETS.redisClusterNodes.key });
    const ratelimit = envOf(named("Deployment", "ratelimit").spec!.template.spec.containers[0]);
    expect(ratelimit.REDIS_TYPE).toBe("CLUSTER");
    expect(ratelimit.REDIS_PIPELINE_WINDOW).toMatch(/^[1-9]\d*(us|ms)$/);
    expect(secretValue(ratelimit.REDIS_URL.secretKeyRef.key)).toBe(nodeNames.join(","));
    // Feature's partitions spread over the 3 masters, the same in the materialize job; accepted events reach a replica.
    const feature = envOf(named("Deployment", "feature").spec!.template.spec.containers.find((c: Obj) => c.name === "app"));
    expect(Number(feature.PARTITIONS)).toBeGreaterThanOrEqual(6);
    expect(feature.INGEST_REPLICA_ACKS).toBe("1");
    expect(containers(named("Job", "materialize").spec!.template.spec).map((c) => envOf(c).PARTITIONS)).toEqual(jobs.find((j) => j.name === "materialize")!.commands.map(() => feature.PARTITIONS));
    // The single-Redis overlays are as they were.
    for (const overlay of ["dev", "prod"] as const) {
      const deployments = built[overlay].objects.filter((o) => o.kind === "Deployment");
      expect(envOf(deployments.find((d) => d.metadata.name === "ratelimit")!.spec!.template.spec.containers[0]).REDIS_TYPE, overlay).toBe("SINGLE");
      expect(envOf(deployments.find((d) => d.metadata.name === "feature")!.spec!.template.spec.containers[0]).PARTITIONS, overlay).toBeUndefined();
    }
  });

  it("forms the cluster with a job that waits for the 6 nodes and names them all", () => {
    const job = bootstrap.spec!.template.spec.containers[0];
    expect(job.command).toEqual(["sh", "/etc/redis-cluster/bootstrap.sh"]);
    expect(envOf(job).CLUSTER_NODES.trim().split(/\s+/)).toEqual(nodeNames);
    expect(envOf(job).CLUSTER_REPLICAS).toBe("1");
    expect(bootstrap.spec!.template.metadata.labels[REDIS_CLIENT_LABEL]).toBe("true");
    const volume = bootstrap.spec!.template.spec.volumes.find((v: Obj) => v.name === job.volumeMounts[0].name);
    expect(volume.configMap.name).toBe(configMap.metadata.name);
  });

  describe("the ConfigMap's scripts, run on loopback against 6 real redis-servers", () => {
    const dir = join(work, "redis-cluster");
    const scripts = join(dir, "scripts");
    const redisBin = dirname(tool("redis-server"));
    const running = new Map<number, Started>();
    let ports: number[] = [];
    let busPorts: number[] = [];
    const seeds = () => ports.map((p) => `localhost:${p}`).join(" ");

    /** Starts a node the way the pod does (start-node.sh with the ConfigMap's redis.conf), on loopback ports. */
    const startNode = async (i: number) => {
      const data = join(dir, `node-${i}`);
      mkdirSync(data, { recursive: true });
      const started = await startProcess("sh", [join(scripts, "start-node.sh"), "--port", String(ports[i]), "--cluster-port", String(busPorts[i]), "--bind", "127.0.0.1"], {
        env: { ANNOUNCE_HOSTNAME: "localhost", REDIS_CONF: join(scripts, "redis.conf"), DATA_DIR: data, PATH: `${redisBin}:${process.env.PATH}` },
        waitFor: /Ready to accept connections/,
      });
      running.set(i, started);
    };
    const runBootstrap = () => runCommand("env", [`CLUSTER_NODES=${seeds()}`, "WAIT_S=60", `PATH=${redisBin}:${process.env.PATH}`, "sh", join(scripts, "bootstrap.sh")], 90_000);
    const nodeIds = async () => Promise.all(ports.map(async (port) => (await runCommand(join(redisBin, "redis-cli"), ["-p", String(port), "cluster", "myid"])).stdout.trim()));
    // SIGTERM lets a master wait for its replicas (shutdown-timeout); past 15 s, SIGKILL.
    const stopAll = () => Promise.all([...running.values()].map((p) => p.stop("SIGTERM", 15_000)));

    beforeAll(async () => {
      mkdirSync(scripts, { recursive: true });
      for (const [file, text] of Object.entries(configMap.data!)) writeFileSync(join(scripts, file), text);
      const free = new Set<number>();
      while (free.size < 12) free.add(await freePort());
      [ports, busPorts] = [[...free].slice(0, 6), [...free].slice(6)];
      await Promise.all(ports.map((_, i) => startNode(i)));
    }, 60_000);
    afterAll(stopAll, 60_000);

    it("forms the cluster once; a second run changes nothing", async () => {
      const first = await runBootstrap();
      expect(first.code, first.stdout + first.stderr).toBe(0);
      expect(first.stdout).toContain("forming the cluster");
      await waitClusterHealthy(ports, 60_000);
      const ids = await nodeIds();
      const second = await runBootstrap();
      expect(second.code, second.stdout + second.stderr).toBe(0);
      expect(second.stdout).toContain("the cluster is already formed: nothing to do");
      expect(second.stdout).not.toContain("forming the cluster");
      expect(await nodeIds()).toEqual(ids);
      await waitClusterHealthy(ports, 60_000);
    }, 180_000);

    it("rejoins when every node restarts and the addresses in nodes.conf are stale (all pods rescheduled)", async () => {
      await stopAll();
      for (let i = 0; i < ports.length; i++) {
        const file = join(dir, `node-${i}`, "nodes.conf");
        // Every peer moved: 127.0.0.9 has no node listening (they bind 127.0.0.1).
        const stale = readFileSync(file, "utf8").split("\n").map((line) => (line.includes("myself") ? line : line.replace(/ 127\.0\.0\.1:/, " 127.0.0.9:")));
        expect(stale.filter((line) => line.includes(" 127.0.0.9:")).length).toBe(5);
        writeFileSync(file, stale.join("\n"));
      }
      await Promise.all(ports.map((_, i) => startNode(i)));
      await waitClusterHealthy(ports, 60_000);
    }, 120_000);

    it("adds a node that lost its volume back as a replica, and leaves the rest alone", async () => {
      const replica = await (async () => {
        for (let i = 0; i < ports.length; i++) {
          const { stdout } = await runCommand(join(redisBin, "redis-cli"), ["-p", String(ports[i]), "role"]);
          if (stdout.startsWith("slave")) return i;
        }
        throw new Error("no replica");
      })();
      await running.get(replica)!.stop("SIGKILL");
      rmSync(join(dir, `node-${replica}`), { recursive: true, force: true });
      await startNode(replica);
      const run = await runBootstrap();
      expect(run.code, run.stdout + run.stderr).toBe(0);
      expect(run.stdout).toContain(`adding localhost:${ports[replica]} to the cluster as a replica`);
      expect(run.stdout).not.toContain("forming the cluster");
      await waitClusterHealthy(ports, 60_000);
      const { stdout } = await runCommand(join(redisBin, "redis-cli"), ["-p", String(ports[replica]), "role"]);
      expect(stdout.startsWith("slave")).toBe(true);
    }, 120_000);
  });
});

describe("Envoy with the pod listener merged in (--config-yaml)", () => {
  const { objects } = built.dev;

  it("is the release the tests run locally", async () => {
    const { stdout } = await runCommand(tool("envoy"), ["--version"]);
    expect(stdout).toContain(`/${ENVOY_IMAGE.split(":v")[1]}/`);
  });
  const podListener = (role: string) => objects.find((o) => o.kind === "ConfigMap" && o.metadata.name.startsWith(`envoy-pod-listener-${role}-`))!.data!["listener.yaml"]!;

  it.each([...instances.map((i) => [i.id, "sidecar"]), ["edge", "edge"]])("%s validates and exposes only stats and readiness of its own admin port", async (id, role) => {
    const listener = podListener(role);
    const admin = parse(envoyFile(id)).admin.address.socket_address.port_value;
    const merged = parse(listener).static_resources;
    expect(merged.listeners[0].address.socket_address.port_value).toBe(ENVOY_STATS_PORT);
    expect(merged.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address).toEqual({ address: "127.0.0.1", port_value: admin });
    const routes = merged.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes;
    expect(routes.map((r: Obj) => r.match)).toEqual([{ path: "/stats/prometheus" }, { path: "/ready" }]);
    const config = writeWithPki(work, `envoy-${id}.yaml`, envoyFile(id), pkiDir);
    const { code, stdout, stderr } = await runCommand(tool("envoy"), ["--mode", "validate", "--disable-hot-restart", "-l", "error", "-c", config, "--config-yaml", listener], 60_000);
    expect(stdout + stderr).toContain("OK");
    expect(code).toBe(0);
  });
});

describe("PKI Secrets (k8s/pki-secrets.ts)", () => {
  it("holds every Secret the manifests mount, under the key they read, and validates strictly", async () => {
    const secrets = renderPkiSecrets(pkiDir) as unknown as K8sObject[];
    expect(secrets.map((s) => s.metadata.name).sort()).toEqual([...meshIdentities().map((n) => pkiSecrets.identity(n).name), pkiSecrets.trust.name, pkiSecrets.jwks.name].sort());
    for (const overlay of overlays) {
      for (const o of built[overlay].objects) {
        const pod = o.kind === "CronJob" ? o.spec?.jobTemplate.spec.template.spec : o.spec?.template?.spec;
        for (const volume of pod?.volumes ?? []) {
          if (!volume.secret) continue;
          const secret = secrets.find((s) => s.metadata.name === volume.secret.secretName);
          expect(secret, `${o.kind}/${o.metadata.name} volume ${volume.name}`).toBeDefined();
          for (const item of volume.secret.items) expect(Object.keys(secret!.data!), volume.secret.secretName).toContain(item.key);
        }
      }
    }
    const file = join(work, "pki-secrets.yaml");
    writeFileSync(file, secrets.map((s) => JSON.stringify(s)).join("\n---\n"));
    const { code, stdout, stderr } = await runCommand(validator, ["--strict", "-k", KUBERNETES_VERSION, file], 60_000);
    expect(stdout + stderr).not.toMatch(/ERROR|WARN/);
    expect(code).toBe(0);
  });
});

describe("Dockerfile", () => {
  const dockerfile = readFileSync(join(ROOT, "Dockerfile"), "utf8");
  const copied = [...dockerfile.matchAll(/^COPY (?!--from)(\S+) \.\/\S*$/gm)].map((m) => m[1]!);

  /** Every file a module imports, transitively, through relative imports. */
  function importClosure(entry: string, seen = new Set<string>()): Set<string> {
    if (seen.has(entry)) return seen;
    seen.add(entry);
    const source = readFileSync(entry, "utf8");
    for (const [, spec] of source.matchAll(/(?:from|import)\s*\(?\s*"(\.{1,2}\/[^"]+)"/g)) {
      importClosure(resolve(dirname(entry), spec!.replace(/\.js$/, ".ts")), seen);
    }
    return seen;
  }

  it("copies everything the entry points and job scripts import", () => {
    expect(copied).toEqual(expect.arrayContaining(["gen", "services", "models"]));
    const entries = [...services.map((s) => `services/${s.name}/server.ts`), ...jobs.flatMap((j) => j.commands.map((c) => sourceOf(c[0]!)))];
    const outside = entries
      .flatMap((entry) => [...importClosure(join(ROOT, entry))])
      .map((file) => relative(ROOT, file).split("/")[0]!)
      .filter((top) => !copied.includes(top));
    expect([...new Set(outside)]).toEqual([]);
  });

  it("runs as a non-root user, and .dockerignore lets in what it copies", () => {
    expect(dockerfile).toMatch(/^USER 1000:1000$/m);
    const ignore = readFileSync(join(ROOT, ".dockerignore"), "utf8");
    for (const dir of copied) expect(ignore).toContain(`!${dir}`);
  });
});
