import { createHash } from "node:crypto";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import * as ort from "onnxruntime-node";
import { z } from "zod";

/** One input or output as the manifest declares it; -1 is a dynamic dimension. */
const tensorSpecSchema = z.object({
  name: z.string().min(1),
  dtype: z.string().min(1),
  shape: z.array(z.number().int().min(-1)),
});
export type TensorSpec = z.infer<typeof tensorSpecSchema>;

/**
 * The part of models/<name>/<version>/manifest.json the loader relies on. Other
 * fields (metrics, training data, created time) pass through untouched.
 */
const manifestSchema = z.looseObject({
  /** Model name and version; the directory names stand in when absent. */
  name: z.string().min(1).optional(),
  version: z.string().min(1).optional(),
  inputs: z.array(tensorSpecSchema).min(1),
  outputs: z.array(tensorSpecSchema).min(1),
  /** Feature names in input column order. */
  features: z.array(z.string().min(1)).optional(),
  /** Hex sha256 of model.onnx. */
  sha256: z.string().regex(/^[0-9a-f]{64}$/i),
});
export type ModelManifest = z.infer<typeof manifestSchema>;

/**
 * One input feature's distribution in the rows the model was trained on
 * (models/<name>/<version>/reference.json, written by training/monitoring.py): bin
 * k holds edges[k-1] <= x < edges[k] (bin 0 everything below edges[0], the last bin
 * everything from the last edge up), `proportions` the share of finite values in
 * each bin, `missingRate` the share of non-finite values.
 */
export interface FeatureReference {
  name: string;
  edges: number[];
  proportions: number[];
  missingRate: number;
}

/** What drift is measured against, feature by feature in the model's input column order. */
export interface ModelReference {
  /** Training rows the reference was computed from. */
  rows: number;
  features: FeatureReference[];
}

const SHARE_SUM_TOLERANCE = 1e-3;

const referenceSchema = z.looseObject({
  rows: z.number().int().positive(),
  features: z.array(
    z.object({
      name: z.string().min(1),
      edges: z.array(z.number()),
      proportions: z.array(z.number().min(0).max(1)),
      missing_rate: z.number().min(0).max(1),
    }),
  ),
});

/** A model that cannot be served, with the model and the reason in the message. */
export class ModelLoadError extends Error {
  override name = "ModelLoadError";
  constructor(
    readonly model: string,
    reason: string,
  ) {
    super(`model ${model}: ${reason}`);
  }
}

export interface LoadModelOptions {
  /** ONNX Runtime intra-op threads per session; 1 suits many small concurrent runs. */
  threads?: number;
}

const describeShape = (shape: readonly (number | string)[]) => `[${shape.join(", ")}]`;

/** A manifest dimension matches a session dimension when both are dynamic or both equal. */
function dimensionMatches(declared: number, actual: number | string): boolean {
  const actualDynamic = typeof actual === "string" || actual < 0;
  return declared === -1 ? actualDynamic : actual === declared;
}

/** Every disagreement between what the manifest declares and what the ONNX graph has. */
function mismatches(kind: "input" | "output", declared: TensorSpec[], actual: readonly ort.InferenceSession.ValueMetadata[]): string[] {
  const problems: string[] = [];
  const byName = new Map(actual.map((m) => [m.name, m]));
  for (const spec of declared) {
    const meta = byName.get(spec.name);
    if (!meta) {
      problems.push(`${kind} "${spec.name}" is in the manifest but not in the ONNX graph (graph ${kind}s: ${[...byName.keys()].join(", ")})`);
      continue;
    }
    if (!meta.isTensor) {
      problems.push(`${kind} "${spec.name}" is not a tensor in the ONNX graph`);
      continue;
    }
    if (meta.type !== spec.dtype) problems.push(`${kind} "${spec.name}" dtype: manifest ${spec.dtype}, ONNX ${meta.type}`);
    const shapeOk = meta.shape.length === spec.shape.length && spec.shape.every((d, i) => dimensionMatches(d, meta.shape[i]!));
    if (!shapeOk) problems.push(`${kind} "${spec.name}" shape: manifest ${describeShape(spec.shape)}, ONNX ${describeShape(meta.shape)}`);
  }
  if (kind === "input") {
    const declaredNames = new Set(declared.map((s) => s.name));
    for (const name of byName.keys()) {
      if (!declaredNames.has(name)) problems.push(`input "${name}" is in the ONNX graph but not in the manifest`);
    }
  }
  return problems;
}

/**
 * A model directory read and verified, before any session exists: the manifest is
 * valid, declares one float32 [rows, features] input, and model.onnx has the
 * manifest's sha256.
 */
export interface ModelFile {
  name: string;
  version: string;
  /** "ranker-mlp@v1": what logs and errors call it. */
  id: string;
  manifest: ModelManifest;
  bytes: Buffer;
  inputName: string;
  outputName: string;
  featureCount: number;
  /** The training distribution of each input feature; undefined for a model without reference.json. */
  reference: ModelReference | undefined;
}

/** A JSON file of a model directory, checked against its schema; ModelLoadError naming the file and every issue otherwise. */
function readJsonFile<T extends z.ZodType>(dir: string, file: string, id: string, schema: T): z.infer<T> {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(join(dir, file), "utf8"));
  } catch (err) {
    throw new ModelLoadError(id, `${file} is not JSON: ${(err as Error).message}`);
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
    throw new ModelLoadError(id, `invalid ${file}: ${issues}`);
  }
  return parsed.data;
}

/**
 * Reads models/<name>/<version>/reference.json when there is one (older models have
 * none: undefined), and refuses one that does not describe the model's features in
 * its column order with increasing edges and shares that sum to 1: a broken
 * reference is found at load, not by a drift alert that never fires.
 */
function readModelReference(dir: string, id: string, featureNames: string[]): ModelReference | undefined {
  if (!existsSync(join(dir, "reference.json"))) return undefined;
  const reference = readJsonFile(dir, "reference.json", id, referenceSchema);
  const names = reference.features.map((f) => f.name);
  if (names.join() !== featureNames.join()) {
    throw new ModelLoadError(id, `reference.json describes features [${names.join(", ")}], the manifest lists [${featureNames.join(", ")}]`);
  }
  const problems = reference.features.flatMap(({ name, edges, proportions }) => {
    const found: string[] = [];
    if (!edges.every((e, k) => Number.isFinite(e) && (k === 0 || e > edges[k - 1]!))) found.push(`${name}: edges must be finite and increasing`);
    if (proportions.length !== edges.length + 1) found.push(`${name}: ${edges.length} edges need ${edges.length + 1} proportions, not ${proportions.length}`);
    const sum = proportions.reduce((a, b) => a + b, 0);
    if (Math.abs(sum - 1) > SHARE_SUM_TOLERANCE) found.push(`${name}: proportions sum to ${sum}, not 1`);
    return found;
  });
  if (problems.length > 0) throw new ModelLoadError(id, `invalid reference.json: ${problems.join("; ")}`);
  return {
    rows: reference.rows,
    features: reference.features.map((f) => ({ name: f.name, edges: f.edges, proportions: f.proportions, missingRate: f.missing_rate })),
  };
}

/** Reads and verifies models/<name>/<version>/ (manifest.json + model.onnx, and reference.json when present). */
export function readModelFile(dir: string): ModelFile {
  let id = `${basename(dirname(dir))}@${basename(dir)}`;
  const manifestPath = join(dir, "manifest.json");
  const modelPath = join(dir, "model.onnx");
  if (!existsSync(manifestPath)) throw new ModelLoadError(id, `no manifest.json in ${dir}`);
  if (!existsSync(modelPath)) throw new ModelLoadError(id, `no model.onnx in ${dir}`);

  const manifest = readJsonFile(dir, "manifest.json", id, manifestSchema);
  const name = manifest.name ?? basename(dirname(dir));
  const version = manifest.version ?? basename(dir);
  id = `${name}@${version}`;
  const input = manifest.inputs[0]!;
  if (manifest.inputs.length !== 1 || input.dtype !== "float32" || input.shape.length !== 2) {
    throw new ModelLoadError(id, `the manifest must declare one float32 input of shape [-1, features], not ${JSON.stringify(manifest.inputs)}`);
  }
  if (manifest.features && manifest.features.length !== input.shape[1]) {
    throw new ModelLoadError(id, `the manifest lists ${manifest.features.length} features but input "${input.name}" has ${input.shape[1]} columns`);
  }

  const bytes = readFileSync(modelPath);
  const digest = createHash("sha256").update(bytes).digest("hex");
  if (digest !== manifest.sha256.toLowerCase()) {
    throw new ModelLoadError(id, `model.onnx sha256 ${digest} does not match the manifest's ${manifest.sha256}`);
  }
  const reference = manifest.features ? readModelReference(dir, id, manifest.features) : undefined;
  return { name, version, id, manifest, bytes, inputName: input.name, outputName: manifest.outputs[0]!.name, featureCount: input.shape[1]!, reference };
}

/** Throws a ModelLoadError listing every way the ONNX graph's inputs and outputs disagree with the manifest. */
export function checkGraphInterface(
  model: ModelFile,
  inputs: readonly ort.InferenceSession.ValueMetadata[],
  outputs: readonly ort.InferenceSession.ValueMetadata[],
): void {
  const problems = [...mismatches("input", model.manifest.inputs, inputs), ...mismatches("output", model.manifest.outputs, outputs)];
  if (problems.length > 0) throw new ModelLoadError(model.id, `the ONNX graph disagrees with manifest.json: ${problems.join("; ")}`);
}

/** Session options every model runs with: threads from the caller, full graph optimisation. */
export function sessionOptions(threads = 1): ort.InferenceSession.SessionOptions {
  return { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: "all" };
}

/** What a loaded model tells of itself, from its verified files (whichever thread runs its session). */
export abstract class LoadedModel {
  readonly name: string;
  readonly version: string;
  readonly id: string;
  readonly manifest: ModelManifest;
  readonly featureCount: number;
  readonly reference: ModelReference | undefined;

  protected constructor(protected readonly file: ModelFile) {
    ({ name: this.name, version: this.version, id: this.id, manifest: this.manifest, featureCount: this.featureCount, reference: this.reference } = file);
  }
}

/**
 * A verified ONNX ranker with its session on the calling thread: one float32 matrix
 * input [rows, features] and one score output per row, as its manifest declares.
 * Loading checks the file's sha256 and that the ONNX graph's inputs and outputs
 * match the manifest, so a wrong or half-copied model is refused at load, never at
 * request time. Note that onnxruntime-node runs inference synchronously on the
 * thread that calls score(); a server keeps it off its event loop (see
 * services/prediction/inference.ts).
 */
export class OnnxModel extends LoadedModel {
  private constructor(
    file: ModelFile,
    private readonly session: ort.InferenceSession,
  ) {
    super(file);
  }

  /** Loads models/<name>/<version>/ (the directory holding model.onnx and manifest.json). */
  static async load(dir: string, options: LoadModelOptions = {}): Promise<OnnxModel> {
    const file = readModelFile(dir);
    let session: ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(file.bytes, sessionOptions(options.threads));
    } catch (err) {
      throw new ModelLoadError(file.id, `onnxruntime cannot load model.onnx: ${(err as Error).message}`);
    }
    try {
      checkGraphInterface(file, session.inputMetadata, session.outputMetadata);
    } catch (err) {
      await session.release();
      throw err;
    }
    return new OnnxModel(file, session);
  }

  /** Scores `rows` rows laid out row-major in `features` (rows x featureCount). */
  async score(features: Float32Array, rows: number): Promise<Float32Array> {
    if (features.length !== rows * this.featureCount) {
      throw new Error(`${this.id}: expected ${rows} x ${this.featureCount} values, got ${features.length}`);
    }
    const { inputName, outputName } = this.file;
    const output = await this.session.run({ [inputName]: new ort.Tensor("float32", features, [rows, this.featureCount]) }, [outputName]);
    const data = output[outputName]!.data as Float32Array;
    if (data.length !== rows) throw new Error(`${this.id}: output "${outputName}" has ${data.length} values for ${rows} rows`);
    return data;
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

/** Version directories of models/<name>/ that hold a manifest, oldest first ("v1" < "v2" < "v10"). */
export function modelVersions(modelsDir: string, name: string): string[] {
  const root = join(modelsDir, name);
  if (!existsSync(root)) return [];
  return readdirSync(root, { withFileTypes: true })
    .filter((entry) => entry.isDirectory() && existsSync(join(root, entry.name, "manifest.json")))
    .map((entry) => entry.name)
    .sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
}
