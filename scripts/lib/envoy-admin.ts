// A small client for Envoy's admin API (loopback only): counters and gauges,
// histogram quantiles, and runtime overrides.

/** Counters and gauges whose names match the regex, by name. */
export async function stats(adminUrl: string, filter: string): Promise<Map<string, number>> {
  const text = await (await fetch(`${adminUrl}/stats?filter=${encodeURIComponent(filter)}`)).text();
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    const match = /^([^:]+): (\d+(?:\.\d+)?)$/.exec(line.trim());
    if (match) out.set(match[1]!, Number(match[2]));
  }
  return out;
}

export async function stat(adminUrl: string, name: string): Promise<number> {
  const escaped = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return (await stats(adminUrl, `^${escaped}$`)).get(name) ?? 0;
}

/** Interval and cumulative quantiles (P50, P99...) of a histogram, in ms. */
export async function histogram(adminUrl: string, name: string): Promise<Record<string, number | null>> {
  const body = (await (await fetch(`${adminUrl}/stats?format=json&filter=${encodeURIComponent(`^${name}$`)}`)).json()) as {
    stats: { histograms?: { supported_quantiles: number[]; computed_quantiles: { name: string; values: { cumulative: number | null }[] }[] } }[];
  };
  const hist = body.stats.find((s) => s.histograms)?.histograms;
  const entry = hist?.computed_quantiles.find((q) => q.name === name);
  const out: Record<string, number | null> = {};
  hist?.supported_quantiles.forEach((q, i) => (out[`p${q}`] = entry?.values[i]?.cumulative ?? null));
  return out;
}

/** Sets runtime keys without a restart (POST /runtime_modify); an empty value removes the override. */
export async function setRuntime(adminUrl: string, values: Record<string, string | number>, timeoutMs = 5_000): Promise<void> {
  const query = new URLSearchParams(Object.entries(values).map(([k, v]) => [k, String(v)]));
  const res = await fetch(`${adminUrl}/runtime_modify?${query}`, { method: "POST", signal: AbortSignal.timeout(timeoutMs) });
  if (!res.ok) throw new Error(`runtime_modify ${query}: ${res.status} ${await res.text()}`);
}
