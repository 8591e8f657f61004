// Renders the kustomize base (k8s/base/) from envoy/topology.ts, the Envoy configs
// envoy/render.ts renders from it, and k8s/workloads.ts. Overlays and
// components under k8s/ are written by hand on top of it.
//   npx tsx k8s/render.ts          write k8s/base/
//   npx tsx k8s/render.ts --check  exit 1 when a committed file is stale
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { pathToFileURL } from "node:url";
import { stringify } from "yaml";
import { edgeIdentity } from "../envoy/security.js";
import { instanceId, instances, podPorts, services, upstreamEnv, type ServiceSpec } from "../envoy/topology.js";
import { pkiLayout } from "../scripts/lib/pki.js";
import { renderRateLimitConfig } from "../scripts/lib/ratelimit.js";
import { renderAll } from "../envoy/render.js";
import { ROOT } from "../scripts/lib/tools.js";
import { edge, jobs, rateLimit, sidecarResources, workloads, type BatchJob, type Resources, type Workload } from "./workloads.js";

type Obj = Record<string, unknown>;

export const NAMESPACE = "recsys";
export const ENVOY_IMAGE = "envoyproxy/envoy:v1.36.4";
/** Envoy's admin API stays on loopback; this listener exposes only /stats/prometheus and /ready. */
export const ENVOY_STATS_PORT = 15090;
/** Where Prometheus runs; its pods may scrape the metrics and Envoy stats ports. */
export const MONITORING_NAMESPACE = "monitoring";
/** Pods with this label may reach Redis (and Redis accepts them). */
export const REDIS_CLIENT_LABEL = "recsys-mesh/redis-client";
const REDIS_PORT = 6379;
const APP_UID = 1000;
const ENVOY_UID = 101;
/** `nobody`: envoyproxy/ratelimit needs no identity of its own. */
const RATELIMIT_UID = 65534;
/**
 * Secrets the overlays provide (dev generates them; prod creates them out of band):
 * Redis's URL for the apps, on a Redis Cluster its seed nodes (optional: absent, the
 * apps use the one Redis of the URL), and its host:port (and password, if any) in the
 * form envoyproxy/ratelimit reads.
 */
export const SECRETS = {
  redis: { name: "recsys-redis", key: "url" },
  redisClusterNodes: { name: "recsys-redis", key: "cluster-nodes" },
  rateLimitRedis: { name: "recsys-redis", key: "address" },
  rateLimitRedisPassword: { name: "recsys-redis", key: "password" },
};

/**
 * Certificates, CA and JWKS in every pod at scripts/lib/pki.ts's layout under this root
 * (the rendered Envoy configs read them there), one Secret each, from
 * `npx tsx k8s/pki-secrets.ts` (k8s/README.md). Envoy watches each mounted directory,
 * so a Secret updated in place is picked up without a restart.
 */
export const PKI_ROOT = "/etc/recsys/pki";
const pki = pkiLayout(PKI_ROOT);
export interface PkiSecret {
  name: string;
  /** The one key: the file name the configs read. */
  key: string;
  /** Where it is mounted (a directory Envoy or the app watches). */
  mountPath: string;
}
export const pkiSecrets = {
  identity: (name: string): PkiSecret => ({ name: `recsys-pki-${name}`, key: basename(pki.identity(name).sds.path), mountPath: pki.identity(name).sds.directory }),
  trust: { name: "recsys-pki-trust", key: basename(pki.trust.path), mountPath: pki.trust.directory } as PkiSecret,
  jwks: { name: "recsys-jwks", key: basename(pki.jwks), mountPath: dirname(pki.jwks) } as PkiSecret,
};
/** The JWKS the apps check admin tokens against, as the edge does. */
const JWKS_PATH = pki.jwks;

const pkiVolume = (volume: string, secret: PkiSecret): Obj => ({ name: volume, secret: { secretName: secret.name, items: [{ key: secret.key, path: secret.key }] } });
const pkiMount = (volume: string, secret: PkiSecret): Obj => ({ name: volume, mountPath: secret.mountPath, readOnly: true });
/** An Envoy's certificate and the CA: volumes for the pod, mounts for the Envoy container only (the app never reads the key). */
function envoyPki(identity: string): { volumes: Obj[]; mounts: Obj[] } {
  const own = pkiSecrets.identity(identity);
  return {
    volumes: [pkiVolume("pki-identity", own), pkiVolume("pki-trust", pkiSecrets.trust)],
    mounts: [pkiMount("pki-identity", own), pkiMount("pki-trust", pkiSecrets.trust)],
  };
}

const HEADER = "# Rendered by k8s/render.ts from envoy/topology.ts and k8s/workloads.ts. Do not edit.\n";
const BASE = join(ROOT, "k8s", "base");

/**
 * Placeholder image, mapped to a registry and tag by the overlays (kustomize `images`):
 * recsys/<service>, or recsys/<service>-<version> when the service has several
 * versions, so the canary can run another tag than the stable version.
 */
const imageOf = (spec: ServiceSpec, version: string) => `recsys/${instanceId(spec, version)}`;
const envoyConfigMap = (id: string) => `envoy-${id}`;

function workload(name: string): Workload {
  const found = workloads[name];
  if (!found) throw new Error(`k8s/workloads.ts has no entry for service ${name}`);
  return found;
}

const labels = (app: string, version: string) => ({ app, version });

/** Least privilege for every container: the Pod Security "restricted" profile and a read-only root. */
function containerSecurity(uid: number): Obj {
  return {
    runAsUser: uid,
    runAsGroup: uid,
    runAsNonRoot: true,
    allowPrivilegeEscalation: false,
    readOnlyRootFilesystem: true,
    capabilities: { drop: ["ALL"] },
    seccompProfile: { type: "RuntimeDefault" },
  };
}

const podSecurity = { runAsNonRoot: true, seccompProfile: { type: "RuntimeDefault" } };

/**
 * `-c` the rendered config, plus the pod listener (stats, readiness) merged in with
 * --config-yaml. Two workers: Envoy would otherwise start one per core of the node.
 */
const ENVOY_ARGS = ["-c", "/etc/envoy/envoy.yaml", "--config-yaml", "$(ENVOY_POD_LISTENER)", "--disable-hot-restart", "--concurrency", "2", "-l", "warn"];

function envoyProbes(): Obj {
  const ready = { httpGet: { path: "/ready", port: ENVOY_STATS_PORT } };
  return {
    startupProbe: { ...ready, periodSeconds: 1, failureThreshold: 60 },
    readinessProbe: { ...ready, periodSeconds: 5, failureThreshold: 2 },
    livenessProbe: { ...ready, periodSeconds: 10, timeoutSeconds: 5, failureThreshold: 3 },
  };
}

/**
 * The Envoy sidecar as a native sidecar (an init container that keeps running): it is
 * ready before the app starts, so the app's first upstream call has a path, and it
 * stops after the app, so in-flight calls finish through it. It also ends with a Job.
 */
function sidecar(spec: ServiceSpec, version: string, withIngress: boolean): Obj {
  return {
    name: "envoy",
    image: ENVOY_IMAGE,
    restartPolicy: "Always",
    command: ["envoy"],
    args: ENVOY_ARGS,
    env: [{ name: "ENVOY_POD_LISTENER", valueFrom: { configMapKeyRef: { name: "envoy-pod-listener-sidecar", key: "listener.yaml" } } }],
    ports: [
      ...(withIngress ? [{ name: "grpc", containerPort: podPorts.ingress(spec.name, version) }] : []),
      { name: "http-envoy-prom", containerPort: ENVOY_STATS_PORT },
    ],
    ...envoyProbes(),
    resources: sidecarResources,
    securityContext: containerSecurity(ENVOY_UID),
    volumeMounts: [{ name: "envoy-config", mountPath: "/etc/envoy", readOnly: true }, ...envoyPki(spec.name).mounts],
  };
}

function secretEnv(name: string, secret: { name: string; key: string }, optional = false): Obj {
  return { name, valueFrom: { secretKeyRef: { name: secret.name, key: secret.key, ...(optional ? { optional } : {}) } } };
}

/** Where a Redis client finds Redis: the URL, and the cluster's nodes when the secret names them. */
const redisEnv = (work: Workload): Obj[] =>
  work.redis ? [secretEnv("REDIS_URL", SECRETS.redis), secretEnv("REDIS_CLUSTER_NODES", SECRETS.redisClusterNodes, true)] : [];

const plainEnv = (vars: Record<string, string>) => Object.entries(vars).map(([name, value]) => ({ name, value }));

/** The app's env: only variables its config shape reads (test/k8s.test.ts checks every name). */
function appEnv(spec: ServiceSpec, version: string, work: Workload): Obj[] {
  return [
    ...plainEnv({
      // Bound on all interfaces so kubelet probes and Prometheus reach it at the pod IP;
      // the NetworkPolicies keep every other pod off the app ports.
      HOST: "0.0.0.0",
      GRPC_PORT: String(podPorts.app(spec.name, version)),
      ...(spec.connect ? { CONNECT_PORT: String(podPorts.appConnect(spec.name, version)) } : {}),
      METRICS_PORT: String(podPorts.appMetrics(spec.name, version)),
      LOG_LEVEL: "info",
      ...(spec.versions.length > 1 ? { SERVICE_VERSION: version } : {}),
      ...upstreamEnv(podPorts, spec, version),
      ...work.dataDirs,
      ...work.env,
      // Admin calls carry the edge's verified JWT; the app checks it against the same keys.
      JWKS_PATH,
      // The app's spans join its Envoys' in the same Zipkin (sampled as Envoy decided).
      OTEL_EXPORTER_ZIPKIN_ENDPOINT: ZIPKIN_SPANS_URL,
    }),
    ...redisEnv(work),
  ];
}

/** A job step's env: the service's settings it needs, no listeners, no admin credentials. */
function jobEnv(spec: ServiceSpec, job: BatchJob, work: Workload): Obj[] {
  return [
    ...plainEnv({ LOG_LEVEL: "info", ...(spec.versions.length > 1 ? { SERVICE_VERSION: job.version } : {}), ...upstreamEnv(podPorts, spec, job.version, job.upstreams) }),
    ...redisEnv(work),
  ];
}

/** The images hold the services compiled to JavaScript (scripts/build.ts), as `npm start` runs them. */
const NODE = ["node", "--enable-source-maps"];

/** tmp for Node, plus the workload's data directories. */
function writableVolumes(work: Workload): { volumes: Obj[]; mounts: Obj[] } {
  const dirs = { tmp: "/tmp", ...Object.fromEntries(Object.values(work.dataDirs ?? {}).map((path, i) => [`data-${i}`, path])) };
  return {
    volumes: Object.keys(dirs).map((name) => ({ name, emptyDir: {} })),
    mounts: Object.entries(dirs).map(([name, mountPath]) => ({ name, mountPath })),
  };
}

function appContainer(spec: ServiceSpec, version: string, work: Workload, mounts: Obj[]): Obj {
  const grpcPort = podPorts.app(spec.name, version);
  const metricsPort = podPorts.appMetrics(spec.name, version);
  return {
    name: "app",
    image: imageOf(spec, version),
    command: NODE,
    args: [`services/${spec.name}/server.js`],
    env: appEnv(spec, version, work),
    ports: [
      { name: "grpc-app", containerPort: grpcPort },
      ...(spec.connect ? [{ name: "http-connect", containerPort: podPorts.appConnect(spec.name, version) }] : []),
      { name: "http-metrics", containerPort: metricsPort },
    ],
    // Health is honest (models loaded, index built, Redis reachable), so startup and
    // readiness ask it. Liveness must not: a Redis outage would restart every feature
    // pod. It asks the metrics endpoint instead, which answers while the event loop does.
    startupProbe: { grpc: { port: grpcPort }, periodSeconds: 2, failureThreshold: Math.ceil(work.startupSeconds / 2) },
    readinessProbe: { grpc: { port: grpcPort }, periodSeconds: 5, timeoutSeconds: 2, failureThreshold: 2 },
    livenessProbe: { httpGet: { path: "/metrics", port: metricsPort }, periodSeconds: 10, timeoutSeconds: 5, failureThreshold: 3 },
    // Out of the Service's endpoints (and the callers' DNS answers) before SIGTERM
    // starts the drain.
    lifecycle: { preStop: { sleep: { seconds: 5 } } },
    resources: work.resources,
    securityContext: containerSecurity(APP_UID),
    volumeMounts: [...mounts, pkiMount("jwks", pkiSecrets.jwks)],
  };
}

function serviceAccount(name: string, app: string): Obj {
  return { apiVersion: "v1", kind: "ServiceAccount", metadata: { name, labels: { app } }, automountServiceAccountToken: false };
}

/** Scales on the serving container's CPU and, given `rpsMetric`, on requests per second per pod. */
function hpa(name: string, app: string, version: string, scaling: Omit<Workload["autoscaling"], "rpsPerPod"> & { rpsPerPod?: number }, container: string, rpsMetric?: string): Obj {
  return {
    apiVersion: "autoscaling/v2",
    kind: "HorizontalPodAutoscaler",
    metadata: { name, labels: labels(app, version) },
    spec: {
      scaleTargetRef: { apiVersion: "apps/v1", kind: "Deployment", name },
      minReplicas: scaling.minReplicas,
      maxReplicas: scaling.maxReplicas,
      metrics: [
        // Not the pod's CPU: the sidecar's share would blur what saturates first.
        { type: "ContainerResource", containerResource: { name: "cpu", container, target: { type: "Utilization", averageUtilization: scaling.cpuPercent } } },
        // Served by prometheus-adapter (observability/prometheus-adapter.yaml).
        ...(rpsMetric ? [{ type: "Pods", pods: { metric: { name: rpsMetric }, target: { type: "AverageValue", averageValue: String(scaling.rpsPerPod) } } }] : []),
      ],
    },
  };
}

function pdb(name: string, app: string, version: string): Obj {
  return {
    apiVersion: "policy/v1",
    kind: "PodDisruptionBudget",
    metadata: { name, labels: labels(app, version) },
    // maxUnavailable, not minAvailable: a one-replica dev deployment can still be drained.
    spec: { maxUnavailable: 1, selector: { matchLabels: labels(app, version) } },
  };
}

const prometheusAnnotations = (port: number) => ({ "prometheus.io/scrape": "true", "prometheus.io/port": String(port), "prometheus.io/path": "/metrics" });

function spread(app: string, version: string): Obj[] {
  return [{ maxSkew: 1, topologyKey: "kubernetes.io/hostname", whenUnsatisfiable: "ScheduleAnyway", labelSelector: { matchLabels: labels(app, version) } }];
}

/**
 * A Deployment of one app version: rolled with no pod down, spread over nodes, its
 * own service account without a token; `pod` is its pod spec's own part.
 */
function deploymentOf(name: string, app: string, version: string, template: { labels?: Record<string, string>; annotations?: Record<string, string> }, pod: Obj): Obj {
  return {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name, labels: labels(app, version) },
    spec: {
      selector: { matchLabels: labels(app, version) },
      strategy: { type: "RollingUpdate", rollingUpdate: { maxUnavailable: 0, maxSurge: "25%" } },
      template: {
        metadata: { labels: template.labels ?? labels(app, version), ...(template.annotations ? { annotations: template.annotations } : {}) },
        spec: {
          serviceAccountName: app,
          automountServiceAccountToken: false,
          securityContext: podSecurity,
          // Enough for a preStop sleep (5 s, the edge 10 s), the app's drain (SHUTDOWN_GRACE_MS, 10 s) and the sidecar's exit.
          terminationGracePeriodSeconds: 30,
          topologySpreadConstraints: spread(app, version),
          ...pod,
        },
      },
    },
  };
}

/** ServiceAccount, headless Service, Deployment, autoscaler and disruption budget of one instance. */
function renderInstance(spec: ServiceSpec, version: string, id: string): Obj[] {
  const work = workload(spec.name);
  const podLabels = { ...labels(spec.name, version), ...(work.redis ? { [REDIS_CLIENT_LABEL]: "true" } : {}) };
  const writable = writableVolumes(work);
  const deployment = deploymentOf(id, spec.name, version, { labels: podLabels, annotations: prometheusAnnotations(podPorts.appMetrics(spec.name, version)) }, {
    initContainers: [sidecar(spec, version, true)],
    containers: [appContainer(spec, version, work, writable.mounts)],
    volumes: [{ name: "envoy-config", configMap: { name: envoyConfigMap(id) } }, ...envoyPki(spec.name).volumes, pkiVolume("jwks", pkiSecrets.jwks), ...writable.volumes],
  });
  // Headless: Envoy resolves it (STRICT_DNS) to every ready pod and balances, ejects
  // and health-checks per pod.
  const service = {
    apiVersion: "v1",
    kind: "Service",
    metadata: { name: id, labels: labels(spec.name, version) },
    spec: {
      clusterIP: "None",
      selector: labels(spec.name, version),
      ports: [{ name: "grpc", port: podPorts.ingress(spec.name, version), targetPort: "grpc", appProtocol: "grpc" }],
    },
  };
  return [
    ...(version === spec.versions[0] ? [serviceAccount(spec.name, spec.name)] : []),
    service,
    deployment,
    hpa(id, spec.name, version, work.autoscaling, "app", "grpc_server_handled_per_second"),
    pdb(id, spec.name, version),
  ];
}

function renderEdge(): Obj[] {
  const app = "edge";
  const version = "v1";
  const deployment = deploymentOf(app, app, version, {}, {
    containers: [
      {
        name: "envoy",
        image: ENVOY_IMAGE,
        command: ["envoy"],
        args: ENVOY_ARGS,
        env: [{ name: "ENVOY_POD_LISTENER", valueFrom: { configMapKeyRef: { name: "envoy-pod-listener-edge", key: "listener.yaml" } } }],
        ports: [
          { name: "grpc", containerPort: podPorts.edge },
          { name: "http-envoy-prom", containerPort: ENVOY_STATS_PORT },
        ],
        ...envoyProbes(),
        // Out of the Service's endpoints before Envoy exits (it does not drain on SIGTERM).
        lifecycle: { preStop: { sleep: { seconds: 10 } } },
        resources: edge.resources,
        securityContext: containerSecurity(ENVOY_UID),
        volumeMounts: [{ name: "envoy-config", mountPath: "/etc/envoy", readOnly: true }, ...envoyPki(edgeIdentity).mounts, pkiMount("jwks", pkiSecrets.jwks)],
      },
    ],
    volumes: [{ name: "envoy-config", configMap: { name: envoyConfigMap("edge") } }, ...envoyPki(edgeIdentity).volumes, pkiVolume("jwks", pkiSecrets.jwks)],
  });
  const service = {
    apiVersion: "v1",
    kind: "Service",
    metadata: { name: app, labels: labels(app, version) },
    spec: { selector: labels(app, version), ports: [{ name: "grpc", port: podPorts.edge, targetPort: "grpc", appProtocol: "grpc" }] },
  };
  return [serviceAccount(app, app), service, deployment, hpa(app, app, version, edge.autoscaling, "envoy", "envoy_http_downstream_rq_per_second"), pdb(app, app, version)];
}

const RATELIMIT_HTTP_PORT = 8080;
const RATELIMIT_CONFIG_DIR = "/data/ratelimit/config";
const rateLimitConfigFile = "ratelimit/recsys-edge.yaml";

/**
 * envoyproxy/ratelimit behind every edge: limits from scripts/lib/ratelimit.ts (a
 * ConfigMap), counters in the mesh's Redis. A headless Service, so each edge's
 * Envoy (STRICT_DNS) balances over the pods itself.
 */
function renderRateLimit(): Obj[] {
  const app = "ratelimit";
  const version = "v1";
  const env = plainEnv({
    GRPC_PORT: String(podPorts.rateLimitGrpc),
    PORT: String(RATELIMIT_HTTP_PORT),
    // Its debug endpoints (config dump, pprof) stay inside the pod.
    DEBUG_HOST: "127.0.0.1",
    USE_STATSD: "false",
    LOG_LEVEL: "warn",
    LOG_FORMAT: "json",
    BACKEND_TYPE: "redis",
    REDIS_SOCKET_TYPE: "tcp",
    REDIS_TYPE: "SINGLE",
    CACHE_KEY_PREFIX: "ratelimit:",
    RUNTIME_ROOT: dirname(dirname(RATELIMIT_CONFIG_DIR)),
    RUNTIME_SUBDIRECTORY: basename(dirname(RATELIMIT_CONFIG_DIR)),
    RUNTIME_APPDIRECTORY: basename(RATELIMIT_CONFIG_DIR),
    // A ConfigMap volume swaps a symlink on update: watch the subdirectory, not the root.
    RUNTIME_WATCH_ROOT: "false",
  });
  const health = { httpGet: { path: "/healthcheck", port: RATELIMIT_HTTP_PORT } };
  const deployment = deploymentOf(app, app, version, { labels: { ...labels(app, version), [REDIS_CLIENT_LABEL]: "true" } }, {
    containers: [
      {
        name: "ratelimit",
        image: rateLimit.image,
        command: ["/bin/ratelimit"],
        env: [
          ...env,
          secretEnv("REDIS_URL", SECRETS.rateLimitRedis),
          secretEnv("REDIS_AUTH", SECRETS.rateLimitRedisPassword, true),
        ],
        ports: [
          { name: "grpc", containerPort: podPorts.rateLimitGrpc },
          { name: "http-health", containerPort: RATELIMIT_HTTP_PORT },
        ],
        startupProbe: { ...health, periodSeconds: 1, failureThreshold: 60 },
        readinessProbe: { ...health, periodSeconds: 5, failureThreshold: 2 },
        livenessProbe: { ...health, periodSeconds: 10, timeoutSeconds: 5, failureThreshold: 3 },
        // Out of the edges' DNS answers before it stops.
        lifecycle: { preStop: { sleep: { seconds: 5 } } },
        resources: rateLimit.resources,
        securityContext: containerSecurity(RATELIMIT_UID),
        volumeMounts: [{ name: "config", mountPath: RATELIMIT_CONFIG_DIR, readOnly: true }],
      },
    ],
    volumes: [{ name: "config", configMap: { name: "ratelimit-config" } }],
  });
  const service = {
    apiVersion: "v1",
    kind: "Service",
    metadata: { name: app, labels: labels(app, version) },
    spec: { clusterIP: "None", selector: labels(app, version), ports: [{ name: "grpc", port: podPorts.rateLimitGrpc, targetPort: "grpc", appProtocol: "grpc" }] },
  };
  return [serviceAccount(app, app), service, deployment, hpa(app, app, version, rateLimit.autoscaling, "ratelimit"), pdb(app, app, version)];
}

function renderJob(job: BatchJob): Obj[] {
  const spec = services.find((s) => s.name === job.service)!;
  const work = workload(job.service);
  const jobLabels = labels(job.name, job.version);
  const step = (command: string[], name: string) => ({
    name,
    image: imageOf(spec, job.version),
    command: NODE,
    args: command,
    env: jobEnv(spec, job, work),
    resources: job.resources,
    securityContext: containerSecurity(APP_UID),
    volumeMounts: [{ name: "tmp", mountPath: "/tmp" }],
  });
  const steps = job.commands.map((command, i) => step(command, job.commands.length > 1 ? `step-${i + 1}` : "job"));
  const withSidecar = job.upstreams.length > 0;
  const podSpec = {
    serviceAccountName: job.name,
    automountServiceAccountToken: false,
    securityContext: podSecurity,
    restartPolicy: "Never",
    // Steps run in order as init containers, the last as the job's container.
    initContainers: [...(withSidecar ? [sidecar(spec, job.version, false)] : []), ...steps.slice(0, -1)],
    containers: steps.slice(-1),
    volumes: [
      ...(withSidecar ? [{ name: "envoy-config", configMap: { name: envoyConfigMap(instanceId(spec, job.version)) } }, ...envoyPki(spec.name).volumes] : []),
      { name: "tmp", emptyDir: {} },
    ],
  };
  const template = { metadata: { labels: { ...jobLabels, ...(work.redis ? { [REDIS_CLIENT_LABEL]: "true" } : {}) } }, spec: podSpec };
  const jobSpec = { backoffLimit: 2, activeDeadlineSeconds: 3600, template };
  const metadata = { name: job.name, labels: jobLabels };
  const object =
    job.kind === "CronJob"
      ? { apiVersion: "batch/v1", kind: "CronJob", metadata, spec: { schedule: job.schedule, concurrencyPolicy: "Forbid", jobTemplate: { metadata: { labels: jobLabels }, spec: jobSpec } } }
      : // Deleted an hour after it finishes, so the next `kubectl apply` runs it again.
        { apiVersion: "batch/v1", kind: "Job", metadata, spec: { ...jobSpec, ttlSecondsAfterFinished: 3600 } };
  return [serviceAccount(job.name, job.name), object];
}

function policy(name: string, podSelector: Obj, rules: { ingress?: Obj[]; egress?: Obj[] }): Obj {
  const policyTypes = [...(rules.ingress ? ["Ingress"] : []), ...(rules.egress ? ["Egress"] : [])];
  return { apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { name }, spec: { podSelector, policyTypes, ...rules } };
}

const tcp = (...ports: number[]) => ports.map((port) => ({ protocol: "TCP", port }));
const fromApps = (apps: string[]) => ({ podSelector: { matchExpressions: [{ key: "app", operator: "In", values: apps }] } });
/** Zipkin in the monitoring namespace, where every Envoy (envoy/render.ts) and app sends spans. */
const ZIPKIN_PORT = 9411;
const ZIPKIN_SPANS_URL = `http://zipkin.${MONITORING_NAMESPACE}.svc.cluster.local:${ZIPKIN_PORT}/api/v2/spans`;
const fromMonitoring = { namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": MONITORING_NAMESPACE } } };

/**
 * Default deny, then exactly the mesh's paths: the edge and each caller to its
 * upstreams' sidecar ingress, Redis clients to Redis, Prometheus to the metrics and
 * Envoy stats ports, everyone to DNS and to Zipkin (spans). App ports (gRPC, Connect) are reachable only
 * from inside the pod, through the sidecar.
 */
function renderNetworkPolicies(): Obj[] {
  const callers = new Map<string, Set<string>>(services.map((s) => [s.name, new Set(["edge"])]));
  for (const s of services) for (const u of s.upstreams) callers.get(u)!.add(s.name);
  for (const j of jobs) for (const u of j.upstreams) callers.get(u)!.add(j.name);
  const egressTo = (app: string, upstreams: string[]) =>
    policy(`${app}-egress`, { matchLabels: { app } }, { egress: [{ to: [fromApps(upstreams)], ports: tcp(podPorts.ingress("", "")) }] });
  return [
    policy("default-deny", {}, { ingress: [], egress: [] }),
    policy("dns-egress", {}, { egress: [{ ports: [{ protocol: "UDP", port: 53 }, { protocol: "TCP", port: 53 }] }] }),
    policy("tracing-egress", {}, { egress: [{ to: [fromMonitoring], ports: tcp(ZIPKIN_PORT) }] }),
    // Redis lives in the cluster (dev) or outside it (prod), so the port is the rule.
    policy("redis-client-egress", { matchLabels: { [REDIS_CLIENT_LABEL]: "true" } }, { egress: [{ ports: tcp(REDIS_PORT) }] }),
    policy("edge-ingress", { matchLabels: { app: "edge" } }, { ingress: [{ ports: tcp(podPorts.edge) }, { from: [fromMonitoring], ports: tcp(ENVOY_STATS_PORT) }] }),
    // The edge routes every service's API (envoy/render.ts), and asks the rate limit service.
    egressTo("edge", services.map((s) => s.name)),
    policy("edge-ratelimit-egress", { matchLabels: { app: "edge" } }, { egress: [{ to: [fromApps(["ratelimit"])], ports: tcp(podPorts.rateLimitGrpc) }] }),
    policy("ratelimit-ingress", { matchLabels: { app: "ratelimit" } }, { ingress: [{ from: [fromApps(["edge"])], ports: tcp(podPorts.rateLimitGrpc) }] }),
    ...services.map((s) =>
      policy(`${s.name}-ingress`, { matchLabels: { app: s.name } }, {
        ingress: [
          { from: [fromApps([...callers.get(s.name)!].sort())], ports: tcp(podPorts.ingress(s.name, "")) },
          { from: [fromMonitoring], ports: tcp(podPorts.appMetrics(s.name, ""), ENVOY_STATS_PORT) },
        ],
      }),
    ),
    ...services.filter((s) => s.upstreams.length > 0).map((s) => egressTo(s.name, s.upstreams)),
    ...jobs.filter((j) => j.upstreams.length > 0).map((j) => egressTo(j.name, j.upstreams)),
  ];
}

/**
 * The listener merged into every Envoy's rendered config: /stats/prometheus for
 * Prometheus and /ready for the kubelet, proxied to the loopback admin API, whose
 * other endpoints (runtime_modify, quitquitquit) stay unreachable from outside the pod.
 */
function podListener(adminPort: number): Obj {
  const route = (path: string) => ({ match: { path }, route: { cluster: "pod_admin" } });
  return {
    static_resources: {
      listeners: [
        {
          name: "pod_stats",
          address: { socket_address: { address: "0.0.0.0", port_value: ENVOY_STATS_PORT } },
          filter_chains: [
            {
              filters: [
                {
                  name: "envoy.filters.network.http_connection_manager",
                  typed_config: {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    stat_prefix: "pod_stats",
                    route_config: { name: "pod_stats", virtual_hosts: [{ name: "pod_stats", domains: ["*"], routes: [route("/stats/prometheus"), route("/ready")] }] },
                    http_filters: [{ name: "envoy.filters.http.router", typed_config: { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }],
                  },
                },
              ],
            },
          ],
        },
      ],
      clusters: [
        {
          name: "pod_admin",
          type: "STATIC",
          connect_timeout: "0.25s",
          load_assignment: { cluster_name: "pod_admin", endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: "127.0.0.1", port_value: adminPort } } } }] }] },
        },
      ],
    },
  };
}

const yamlDocs = (objects: Obj[]) => HEADER + objects.map((o) => stringify(o, { lineWidth: 0, aliasDuplicateObjects: false })).join("---\n");

/** Every file of k8s/base: path relative to it -> content. */
export function renderBase(): Map<string, string> {
  const out = new Map<string, string>();
  const envoy = renderAll();
  const generators: Obj[] = [];
  // Byte-for-byte the files in envoy/k8s/ (kustomize reads only inside its root).
  for (const { service: spec, version, id } of instances) {
    out.set(`envoy/sidecar-${id}.yaml`, envoy.get(`k8s/sidecar-${id}.yaml`)!);
    generators.push({ name: envoyConfigMap(id), files: [`envoy.yaml=envoy/sidecar-${id}.yaml`] });
    out.set(`${id}.yaml`, yamlDocs(renderInstance(spec, version, id)));
  }
  out.set("envoy/edge.yaml", envoy.get("k8s/edge.yaml")!);
  generators.push({ name: envoyConfigMap("edge"), files: ["envoy.yaml=envoy/edge.yaml"] });
  for (const [role, adminPort] of [["sidecar", podPorts.sidecarAdmin("", "")], ["edge", podPorts.edgeAdmin]] as const) {
    out.set(`envoy/pod-listener-${role}.yaml`, yamlDocs([podListener(adminPort)]));
    generators.push({ name: `envoy-pod-listener-${role}`, files: [`listener.yaml=envoy/pod-listener-${role}.yaml`] });
  }
  out.set("edge.yaml", yamlDocs(renderEdge()));
  out.set("ratelimit.yaml", yamlDocs(renderRateLimit()));
  out.set(rateLimitConfigFile, renderRateLimitConfig());
  generators.push({ name: "ratelimit-config", files: [`${basename(rateLimitConfigFile)}=${rateLimitConfigFile}`] });
  out.set("jobs.yaml", yamlDocs(jobs.flatMap(renderJob)));
  out.set("network-policies.yaml", yamlDocs(renderNetworkPolicies()));
  out.set(
    "namespace.yaml",
    yamlDocs([
      {
        apiVersion: "v1",
        kind: "Namespace",
        // Every pod here meets the Pod Security "restricted" profile; admission enforces it.
        metadata: { name: NAMESPACE, labels: { "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest" } },
      },
    ]),
  );
  const resources = ["namespace.yaml", ...instances.map(({ id }) => `${id}.yaml`), "edge.yaml", "ratelimit.yaml", "jobs.yaml", "network-policies.yaml"];
  out.set(
    "kustomization.yaml",
    yamlDocs([
      {
        apiVersion: "kustomize.config.k8s.io/v1beta1",
        kind: "Kustomization",
        namespace: NAMESPACE,
        labels: [{ pairs: { "app.kubernetes.io/part-of": "recsys-mesh" } }],
        resources,
        configMapGenerator: generators,
      },
    ]),
  );
  return out;
}

/** Paths of k8s/base that differ from a fresh render (or should not be there). */
export function staleBaseFiles(): string[] {
  const rendered = renderBase();
  const stale = [...rendered].filter(([path, text]) => !existsSync(join(BASE, path)) || readFileSync(join(BASE, path), "utf8") !== text).map(([path]) => path);
  const present = (dir: string): string[] =>
    readdirSync(join(BASE, dir), { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? present(join(dir, e.name)) : [join(dir, e.name)]));
  const extra = existsSync(BASE) ? present("").filter((path) => !rendered.has(path)) : [];
  return [...stale, ...extra];
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  if (process.argv.includes("--check")) {
    const stale = staleBaseFiles();
    for (const path of stale) console.error(`k8s/base/${path} is stale: run npx tsx k8s/render.ts`);
    process.exit(stale.length ? 1 : 0);
  }
  rmSync(BASE, { recursive: true, force: true });
  for (const [path, text] of renderBase()) {
    mkdirSync(dirname(join(BASE, path)), { recursive: true });
    writeFileSync(join(BASE, path), text);
  }
}
