// The popular and trending lists in Redis: a sorted set per category and one for every
// category, member item id, higher score first. The feature service writes them;
// retrieval and prediction read them. One definition, since the key is the contract.

/** The list of every category together. */
export const ALL_CATEGORIES = "all";

export type RankedListKind = "popular" | "trending";

export const rankedListKey = (kind: RankedListKind, category: string) => `recsys:${kind}:${category}`;
