// Every reason our errors carry (google.rpc.ErrorInfo.reason, domain "recsys"). Callers
// and tests branch on these strings, so they are a contract: listed once, here.
export const Reason = {
  /** A field of the request is wrong; ErrorInfo.metadata.field names it. */
  InvalidArgument: "INVALID_ARGUMENT",
  /** The request bytes do not decode as the method's message. */
  MalformedRequest: "MALFORMED_REQUEST",
  /** An admin method without a bearer token of role admin. */
  AdminTokenRequired: "ADMIN_TOKEN_REQUIRED",
  /** Prediction sheds low-priority work under load. */
  Overloaded: "OVERLOADED",
  /** Prediction's L2 cache (Redis) did not answer an admin invalidation. */
  CacheUnavailable: "CACHE_UNAVAILABLE",
  /** A model reload found a model that cannot be served; the current ones keep serving. */
  ModelLoadFailed: "MODEL_LOAD_FAILED",
  /** The feature service's Redis is unreachable or slow. */
  FeatureStoreUnavailable: "FEATURE_STORE_UNAVAILABLE",
  /** Retrieval's index is still being built or loaded. */
  IndexNotReady: "INDEX_NOT_READY",
  /** Retrieval's replicated index log (Redis) is unavailable; nothing was written. */
  IndexLogUnavailable: "INDEX_LOG_UNAVAILABLE",
  /** An index write was logged but this replica has not applied it yet. */
  IndexLogLagging: "INDEX_LOG_LAGGING",
  UserNotFound: "USER_NOT_FOUND",
  ItemNotFound: "ITEM_NOT_FOUND",
  /** The experiment service's Redis is unreachable or slow. */
  StoreUnavailable: "STORE_UNAVAILABLE",
  ExperimentExists: "EXPERIMENT_EXISTS",
  ExperimentNotFound: "EXPERIMENT_NOT_FOUND",
  /** An update of an experiment against a revision that is no longer the stored one. */
  StaleRevision: "STALE_REVISION",
  /** The definitions kept changing while a write retried. */
  ConcurrentChange: "CONCURRENT_CHANGE",
  /** An outcome for a user never exposed to the experiment. */
  UserNotExposed: "USER_NOT_EXPOSED",
} as const;

export type Reason = (typeof Reason)[keyof typeof Reason];
