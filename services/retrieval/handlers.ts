import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  CandidateSource,
  PopularKind,
  RetrievalService,
  type Filter,
  type GetCandidatesRequest,
  type SearchRequest,
} from "../../gen/recsys/retrieval/v1/retrieval_pb.js";
import { Code, implement, invalidArgument, Reason, requireAdmin, statusError } from "../kit/index.js";
import type { EmbeddingTable } from "../kit/artifacts.js";
import { fuseCandidates, interleave, toColumns, type SourceResult, type SourcedItem } from "./candidates.js";
import type { RetrievalConfig } from "./config.js";
import type { IndexStore } from "./index-store.js";
import { normalize, type Hit, type ItemIndex, type ItemUpsert, type SearchFilter } from "./item-index.js";
import { searchSeconds, sourceCandidates } from "./metrics.js";
import { ALL_CATEGORIES, type ListKind, type PopularLists, type RankedItem, type RankedList } from "./popular.js";

/** What the handlers serve from, set once the index is built or loaded. */
export interface RetrievalResources {
  store: IndexStore;
  users: EmbeddingTable;
  popular: PopularLists;
}

/** Popular lists are read with room for items the index no longer has or the filter drops. */
const listReadCount = (k: number, excluded: number) => Math.min(2 * k + excluded, 5000);

/** values as a query vector of the index's dimension, or INVALID_ARGUMENT naming field. */
function vectorArgument(values: readonly number[], dim: number, field: string): Float32Array {
  if (values.length !== dim) throw invalidArgument(field, `has ${values.length} values; the index dimension is ${dim}`);
  if (!values.every(Number.isFinite)) throw invalidArgument(field, "must hold finite numbers only");
  return Float32Array.from(values);
}

function searchFilter(filter: Filter | undefined, alsoExclude: readonly string[] = []): SearchFilter {
  return {
    includeCategories: filter?.includeCategories ?? [],
    excludeCategories: filter?.excludeCategories ?? [],
    excludeItemIds: [...(filter?.excludeItemIds ?? []), ...alsoExclude],
  };
}

function userVector(users: EmbeddingTable, userId: string, dim: number): Float32Array | undefined {
  const row = users.rowOf.get(userId);
  return row === undefined ? undefined : users.vectors.subarray(row * dim, (row + 1) * dim);
}

/** The categories the user touched most in recentItemIds, most first (ties: most recent first). */
function topCategories(index: ItemIndex, recentItemIds: readonly string[], count: number): string[] {
  const counts = new Map<string, number>();
  for (const itemId of recentItemIds) {
    const category = index.categoryOf(itemId);
    if (category) counts.set(category, (counts.get(category) ?? 0) + 1);
  }
  return [...counts.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, count)
    .map(([category]) => category);
}

const listKinds: ListKind[] = ["popular", "trending"];
const listSource = (kind: ListKind) => (kind === "popular" ? CandidateSource.POPULAR : CandidateSource.TRENDING);

/**
 * The popular and trending sources of GetCandidates: each kind's lists filtered
 * like the ANN search (live items, categories, excluded ids), interleaved, top k.
 */
function listSources(lists: readonly RankedList[], index: ItemIndex, filter: SearchFilter, k: number): SourceResult[] {
  const included = new Set(filter.includeCategories);
  const excludedCategories = new Set(filter.excludeCategories);
  const excludedIds = new Set(filter.excludeItemIds);
  const allowed = (items: readonly RankedItem[]): SourcedItem[] => {
    const out: SourcedItem[] = [];
    for (const { itemId, score } of items) {
      const category = index.categoryOf(itemId);
      if (category === undefined || excludedIds.has(itemId) || excludedCategories.has(category)) continue;
      if (included.size > 0 && !included.has(category)) continue;
      out.push({ itemId, score, category });
    }
    return out;
  };
  // Both kinds fall back to the same static popularity: counted once, as popular.
  const staticPopular = new Set(lists.filter((list) => list.kind === "popular" && list.fallback).map((list) => list.category));
  const used = lists.filter((list) => !(list.kind === "trending" && list.fallback && staticPopular.has(list.category)));
  return listKinds.map((kind) => ({
    source: listSource(kind),
    items: interleave(used.filter((list) => list.kind === kind).map((list) => allowed(list.items)), k),
  }));
}

export interface RetrievalDeps {
  config: RetrievalConfig;
  /** The loaded index and lists; undefined while they are being built or loaded. */
  resources: () => RetrievalResources | undefined;
}

export function retrievalService({ config, resources }: RetrievalDeps) {
  const ready = (): RetrievalResources => {
    const loaded = resources();
    if (!loaded) throw statusError(Code.Unavailable, Reason.IndexNotReady, "the index is still being built or loaded; retry shortly");
    return loaded;
  };

  const timedSearch = (index: ItemIndex, query: Float32Array, k: number, filter: SearchFilter, ef: number, exactRequested: boolean) => {
    const exact = exactRequested || index.size < config.EXACT_SEARCH_BELOW;
    const filtered = filter.includeCategories.length + filter.excludeCategories.length + filter.excludeItemIds.length > 0;
    const started = performance.now();
    const hits = index.search(query, k, { filter, ef: Math.min(ef || config.HNSW_EF_SEARCH, config.HNSW_MAX_EF), exact });
    searchSeconds.observe({ mode: exact ? "exact" : "ann", filtered: String(filtered) }, (performance.now() - started) / 1000);
    return { hits, source: exact ? CandidateSource.EXACT : CandidateSource.ANN };
  };

  /** The query of a Search: its vector, and the item to leave out of its own neighbours. */
  const searchQuery = (request: SearchRequest, index: ItemIndex, users: EmbeddingTable): { vector: Float32Array; self?: string } => {
    const { query } = request;
    switch (query.case) {
      case "embedding":
        return { vector: vectorArgument(query.value.values, index.dim, "embedding.values") };
      case "userId": {
        const vector = userVector(users, query.value, index.dim);
        if (!vector) throw statusError(Code.NotFound, Reason.UserNotFound, `user ${JSON.stringify(query.value)} has no embedding`, { user_id: query.value });
        return { vector };
      }
      case "itemId": {
        const vector = index.vectorOf(query.value);
        if (!vector) throw statusError(Code.NotFound, Reason.ItemNotFound, `item ${JSON.stringify(query.value)} is not in the index`, { item_id: query.value });
        return { vector, self: query.value };
      }
      default:
        throw invalidArgument("query", "set user_id, embedding or item_id");
    }
  };

  const asCandidate = (item: SourcedItem, source: CandidateSource) => ({
    itemId: item.itemId,
    score: item.score,
    category: item.category,
    sources: [{ source, score: item.score }],
  });

  /** Multi-source candidates for one request: ANN, popular/trending by category and neighbours of recent items, fused. */
  async function candidates(request: GetCandidatesRequest) {
    const { store, users, popular } = ready();
    const index = store.index;
    const annK = request.annK || config.CANDIDATES_ANN_K;
    const popularK = request.popularK || config.CANDIDATES_POPULAR_K;
    const filter = searchFilter(request.filter);
    const recent = [...new Set(request.recentItemIds)].filter((itemId) => index.has(itemId));

    // Popular and trending: per included category when the filter names them, else
    // overall plus the user's top categories. Read first, so Redis works while we search.
    const excludedCategories = new Set(filter.excludeCategories);
    const categories = (filter.includeCategories.length > 0
      ? [...filter.includeCategories]
      : [ALL_CATEGORIES, ...topCategories(index, recent, config.CANDIDATES_TOP_CATEGORIES)]
    ).filter((category) => !excludedCategories.has(category));
    const lists = popular.read(
      listKinds.flatMap((kind) => categories.map((category) => ({ kind, category }))),
      listReadCount(popularK, filter.excludeItemIds.length),
    );

    const results: SourceResult[] = [];
    const user = userVector(users, request.userId, index.dim);
    if (user) {
      const { hits, source } = timedSearch(index, user, annK, filter, 0, false);
      results.push({ source, items: hits });
    }
    if (recent.length > 0) {
      const seedFilter = searchFilter(request.filter, recent);
      const neighbours: Hit[][] = recent.map((itemId) => timedSearch(index, index.vectorOf(itemId)!, config.CANDIDATES_ITEM_TO_ITEM_K, seedFilter, 0, false).hits);
      results.push({ source: CandidateSource.ITEM_TO_ITEM, items: interleave(neighbours) });
    }

    results.push(...listSources(await lists, index, filter, popularK));
    for (const { source, items } of results) sourceCandidates.observe({ source: CandidateSource[source] }, items.length);
    const fused = fuseCandidates(results, request.k);
    return {
      ...(request.columnar ? { columns: toColumns(fused) } : { candidates: fused }),
      indexVersion: index.version,
      personalized: user !== undefined,
    };
  }

  return implement(RetrievalService, {
    async search(request) {
      const { store, users } = ready();
      const index = store.index;
      const { vector, self } = searchQuery(request, index, users);
      const filter = searchFilter(request.filter, self ? [self] : []);
      const { hits, source } = timedSearch(index, vector, request.k, filter, request.ef, request.exact);
      return { candidates: hits.map((hit) => asCandidate(hit, source)), indexVersion: index.version };
    },

    getCandidates: (request) => candidates(request),

    async getCandidatesBatch(request) {
      return { responses: await Promise.all(request.requests.map((one) => candidates(one))) };
    },

    async getPopular(request) {
      const { store, popular } = ready();
      const index = store.index;
      const kind: ListKind = request.kind === PopularKind.TRENDING ? "trending" : "popular";
      const source = listSource(kind);
      const [list] = await popular.read([{ kind, category: request.category || ALL_CATEGORIES }], listReadCount(request.k, 0));
      const candidates = list!.items
        .flatMap((item) => {
          const category = index.categoryOf(item.itemId);
          return category === undefined ? [] : [asCandidate({ ...item, category }, source)];
        })
        .slice(0, request.k);
      return { candidates };
    },

    async upsertItems(request) {
      const { store } = ready();
      const { dim } = store.index;
      const firstIndexOf = new Map<string, number>();
      const items: ItemUpsert[] = request.items.map((item, i) => {
        const field = `items[${i}]`;
        const first = firstIndexOf.get(item.itemId);
        if (first !== undefined) throw invalidArgument(`${field}.item_id`, `duplicate of items[${first}].item_id`);
        firstIndexOf.set(item.itemId, i);
        const vector = vectorArgument(item.embedding, dim, `${field}.embedding`);
        if (!normalize(vector)) throw invalidArgument(`${field}.embedding`, "must not be all zeros");
        return { itemId: item.itemId, category: item.category, vector };
      });
      const { inserted, updated } = await store.upsert(items);
      return { inserted, updated, indexVersion: store.index.version };
    },

    async deleteItems(request) {
      const { store } = ready();
      return store.delete(request.itemIds);
    },

    async indexInfo() {
      const { store } = ready();
      const index = store.index;
      return {
        version: index.version,
        size: BigInt(index.size),
        deleted: BigInt(index.deleted),
        capacity: BigInt(index.capacity),
        dimension: index.dim,
        m: index.params.m,
        efConstruction: index.params.efConstruction,
        efSearch: index.params.efSearch,
        space: "ip",
        builtAt: timestampFromDate(index.builtAt),
        origin: index.origin,
      };
    },

    async rebuildIndex(_request, ctx) {
      requireAdmin(ctx.requestHeader, config);
      const { store } = ready();
      const result = await store.rebuild();
      return { previousVersion: result.previousVersion, version: result.version, size: BigInt(result.size), buildMs: result.buildMs };
    },
  });
}
