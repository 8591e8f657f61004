import type { Mesh } from "../../scripts/lib/mesh.js";

/** Predict answers one prediction version has given, whatever the protocol, from its /metrics. */
export async function predictAnswers(mesh: Mesh, version: string): Promise<number> {
  const instance = mesh.instances.find((i) => i.id === `prediction-${version}`)!;
  const text = await (await fetch(`http://127.0.0.1:${instance.metricsPort}/metrics`)).text();
  return [...text.matchAll(/^recsys_prediction_answers_total\{[^}]*\} (\S+)$/gm)].reduce((sum, m) => sum + Number(m[1]), 0);
}
