// One ONNX Runtime session in a worker thread, for services/prediction/inference.ts.
// onnxruntime-node runs inference synchronously on the calling thread: here a batch
// occupies this thread, never the server's event loop. Plain JavaScript, so the
// worker starts the same under node, tsx and vitest.
import { parentPort, workerData } from "node:worker_threads";
import * as ort from "onnxruntime-node";

/** @type {{ bytes: Uint8Array, options: import("onnxruntime-node").InferenceSession.SessionOptions, input: string, output: string, width: number }} */
const { bytes, options, input, output, width } = workerData;
const session = await ort.InferenceSession.create(bytes, options);
parentPort.postMessage({ ready: true, inputs: session.inputMetadata, outputs: session.outputMetadata });

parentPort.on("message", async (/** @type {{ id: number, features: Float32Array, rows: number }} */ { id, features, rows }) => {
  try {
    const started = performance.now();
    const result = await session.run({ [input]: new ort.Tensor("float32", features, [rows, width]) }, [output]);
    const scores = Float32Array.from(/** @type {Float32Array} */ (result[output].data));
    parentPort.postMessage({ id, scores, runMs: performance.now() - started }, [scores.buffer]);
  } catch (err) {
    parentPort.postMessage({ id, error: err instanceof Error ? err.message : String(err) });
  }
});
