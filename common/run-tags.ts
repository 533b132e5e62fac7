/**
 * Every `kmj.*` tag a run in MLflow can carry: the worker writes them, `kmj submit --wait`,
 * `kmj status`, `kmj demo`, `kmj replay` and the benchmarks read them. Users filter on them in
 * the MLflow UI (`tags.\`kmj.request_id\` = '…'`), so a name here is part of the interface.
 */
export const RUN_TAG = {
  /** The request's id: one run per request, found by this tag (idempotency). */
  requestId: 'kmj.request_id',
  /** The request's model URI, as written (`models:/name@alias`, `runs:/…`, `file://…`). */
  modelUri: 'kmj.model_uri',
  /** What the URI resolved to in the Model Registry, when it was a registry URI. */
  modelName: 'kmj.model_name',
  modelVersion: 'kmj.model_version',
  /** Where the model's files came from (the registry version's source). */
  modelArtifactUri: 'kmj.model_artifact_uri',
  /** `onnx`, from the MLmodel flavor. */
  modelKind: 'kmj.model_kind',
  /** `hit` or `miss`: whether the model came from the pod's cache. */
  modelCache: 'kmj.model_cache',
  /**
   * Where the model's files came from: `cache` (the pod's), `node-cache` (the node's, kmj
   * model-cache), `mlflow`, or `local` (a file:// directory).
   */
  modelSource: 'kmj.model_source',
  /** Why the node's cache was passed over for MLflow, when it was (absent, full, damaged). */
  nodeCacheProblem: 'kmj.node_cache_problem',
  /**
   * `refused` when MLflow would not let the run's metrics and inputs name the logged model that
   * ran (its auth wants EDIT on the experiment the model was logged in): they were logged
   * without that link. Absent when linked, or when the model is no logged model.
   */
  modelLink: 'kmj.model_link',
  /** The queue the request came from. */
  queue: 'kmj.queue',
  /** Which delivery of the message made the run (1 for the first). */
  deliveryAttempt: 'kmj.delivery_attempt',
  batchRows: 'kmj.batch_rows',
  workerVersion: 'kmj.worker_version',
  /**
   * The machine the worker ran on, as the kernel names it (`os.machine()`: `aarch64` on a
   * Raspberry Pi 5, `x86_64`): on a mixed cluster, which kind of node made the run.
   */
  machine: 'kmj.machine',
  /** The pod and node that ran it (KUBERNETES_POD_NAME, KUBERNETES_NODE_NAME). */
  pod: 'kmj.pod',
  node: 'kmj.node',
  /** On a run that did not finish: why, and what became of its message (dead-lettered, requeued). */
  error: 'kmj.error',
  outcome: 'kmj.outcome',
  /** The run was recorded in the worker's spool while MLflow was out of reach, then replayed. */
  spooled: 'kmj.spooled',
  replayedAt: 'kmj.replayed_at',
} as const;

/** What `kmj.outcome` says of a run that did not finish. */
export type RunOutcome = 'dead-lettered' | 'requeued';
