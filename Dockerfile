# syntax=docker/dockerfile:1
# One image per service from this one file; the service is a build argument:
#
#   npm run train                      # the images carry the trained models in models/
#   docker build --build-arg SERVICE=prediction -t recsys/prediction:dev .
#
# SERVICE is one of prediction, feature, retrieval, experiment, echo. The image runs
# the services compiled to JavaScript by scripts/build.ts, as `npm start` does: no
# transpiler in the process, and a restarted pod serves in a fraction of the time.
# Kubernetes manifests (k8s/) set the command themselves; CMD is for `docker run`.
#
# Node 24, the LTS line CI tests besides the host's: Node 20 is past its end of life, and
# a full Predict costs the apps about a fifth less CPU on 24 (README, "Apps on Node 24").

# --- build: production dependencies, with the toolchain for native addons ---------
FROM node:24-bookworm-slim AS build
WORKDIR /app
# hnswlib-node compiles a native addon.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
# RECSYS_SKIP_SETUP: the postinstall fetches Envoy, Redis and Go tools for local runs;
# the image needs none of them. ONNXRUNTIME_NODE_INSTALL=skip: the CPU runtime ships
# in the npm package; the optional GPU binaries are not wanted.
RUN RECSYS_SKIP_SETUP=1 ONNXRUNTIME_NODE_INSTALL=skip npm ci --omit=dev --no-audit --no-fund

# --- compile: services/ and gen/ to JavaScript, file for file (esbuild) -------------
FROM node:24-bookworm-slim AS compile
WORKDIR /src
COPY package.json package-lock.json ./
RUN RECSYS_SKIP_SETUP=1 ONNXRUNTIME_NODE_INSTALL=skip npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json ./
COPY scripts/build.ts ./scripts/
COPY scripts/lib/build.ts scripts/lib/tools.ts ./scripts/lib/
COPY gen ./gen
COPY services ./services
RUN npx tsx scripts/build.ts --outdir /out

# --- runtime: node_modules, the compiled services and the models, as a non-root user -
FROM node:24-bookworm-slim
ARG SERVICE
ENV NODE_ENV=production \
    SERVICE=${SERVICE}
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY package.json ./
COPY --from=compile /out/gen ./gen
COPY --from=compile /out/services ./services
COPY models ./models
RUN test -f "services/${SERVICE}/server.js" || { echo "SERVICE must name a folder of services/ with a server.ts (got '${SERVICE}')" >&2; exit 1; }
# The image's `node` user (uid 1000); the manifests run as the same uid.
USER 1000:1000
EXPOSE 50051 50052 9090
CMD ["sh", "-c", "exec node --enable-source-maps services/${SERVICE}/server.js"]
