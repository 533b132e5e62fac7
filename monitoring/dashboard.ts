/**
 * The keda-ml-jobs Grafana dashboard, typed against @grafana/schema; `node scripts/monitoring.mjs`
 * writes it to monitoring/dashboard.json (importable: Dashboards > New > Import).
 *
 * One ScaledJob (and its queue) at a time, chosen by the variables. Every query reads what
 * docs/observability.md lists: the scaler (kmj_*), the workers' reports through the scaler,
 * RabbitMQ's plugin (rabbitmq_*), kube-state-metrics (kube_*, kmj_scaledjob_condition_info) and KEDA's
 * operator (keda_*, whose namespace label arrives as exported_namespace). The cluster suite
 * evaluates every query here against a real Prometheus after a burst of requests
 * (test/cluster/monitoring.cases.ts).
 */
import type { Dashboard, DataSourceRef, Panel, RowPanel, VariableModel } from '@grafana/schema';

const DS: DataSourceRef = { type: 'prometheus', uid: '${datasource}' };

/** One query of a panel: its PromQL and the legend Grafana shows for each series. */
export interface Query {
  readonly expr: string;
  readonly legend: string;
}

export interface PanelSpec {
  readonly title: string;
  readonly description: string;
  readonly type: 'timeseries' | 'stat';
  readonly unit: string;
  readonly queries: readonly Query[];
}

export interface RowSpec {
  readonly title: string;
  readonly panels: readonly PanelSpec[];
}

// The ScaledJob's Jobs, and their pods, by kube-state-metrics' owner references.
const JOBS = 'max by (namespace, job_name) (kube_job_owner{owner_kind="ScaledJob", owner_name="$scaledjob", namespace="$namespace"})';
const ofJobs = (metric: string): string => `sum(${metric} * on (namespace, job_name) group_left () ${JOBS})`;
const PODS = `max by (namespace, pod, owner_name) (kube_pod_owner{owner_kind="Job", namespace="$namespace"} * on (namespace, owner_name) group_left () label_replace(${JOBS}, "owner_name", "$1", "job_name", "(.*)"))`;
const JOB_CREATED = `max by (namespace, owner_name) (label_replace(kube_job_created{namespace="$namespace"} * on (namespace, job_name) group_left () ${JOBS}, "owner_name", "$1", "job_name", "(.*)"))`;
const POD_DELAY = `(max by (namespace, pod, owner_name) (kube_pod_start_time{namespace="$namespace"} * on (namespace, pod) group_left (owner_name) ${PODS}) - on (namespace, owner_name) group_left () ${JOB_CREATED})`;
const steps = (q: number): string =>
  `histogram_quantile(${q}, sum by (le, step) (rate(kmj_request_step_seconds_bucket{name="$queue"}[$__rate_interval])))`;

export const ROWS: readonly RowSpec[] = [
  {
    title: 'Queue',
    panels: [
      {
        title: "Backlog: the scaler's, and KEDA's last read",
        description:
          "What the scaler tells KEDA for the queue (ready messages plus running workers in mode backlog), and the value KEDA last read for the ScaledJob's trigger.",
        type: 'timeseries',
        unit: 'short',
        queries: [
          { expr: 'max by (name) (kmj_scaler_backlog{name="$queue"})', legend: 'scaler: {{name}}' },
          {
            expr: 'max by (scaledObject) (keda_scaler_metrics_value{type="scaledjob", scaledObject="$scaledjob", exported_namespace="$namespace"})',
            legend: 'KEDA: {{scaledObject}}',
          },
        ],
      },
      {
        title: 'Ready and unacknowledged messages',
        description: "RabbitMQ's own figures for the queue (its Prometheus plugin, per-object metrics): waiting, and held by a worker.",
        type: 'timeseries',
        unit: 'short',
        queries: [
          { expr: 'max by (queue) (rabbitmq_queue_messages_ready{queue="$queue"})', legend: 'ready' },
          { expr: 'max by (queue) (rabbitmq_queue_messages_unacked{queue="$queue"})', legend: 'unacknowledged' },
        ],
      },
      {
        title: 'Oldest waiting message (at most)',
        description:
          "An upper bound of the oldest waiting request's age: the time since the scaler last found the queue empty. 0 while nothing waits.",
        type: 'timeseries',
        unit: 's',
        queries: [{ expr: 'max by (name) (kmj_scaler_oldest_waiting_seconds{name="$queue"})', legend: '{{name}}' }],
      },
      {
        title: 'Dead-letter queue',
        description: "Requests waiting in the dead-letter queue (RabbitMQ), and requests dead-lettered a minute (the workers' reports).",
        type: 'timeseries',
        unit: 'short',
        queries: [
          { expr: 'max by (queue) (rabbitmq_queue_messages{queue="$queue.dead"})', legend: 'in {{queue}}' },
          {
            expr: '60 * sum by (name) (rate(kmj_requests_total{name="$queue", outcome="dead_lettered"}[$__rate_interval]))',
            legend: 'dead-lettered a minute',
          },
        ],
      },
    ],
  },
  {
    title: 'Jobs and outcomes',
    panels: [
      {
        title: 'Jobs by state',
        description:
          "The ScaledJob's Jobs now (kube-state-metrics): pods pending, Jobs running, succeeded and failed (finished Jobs stay until the ScaledJob's history limits remove them).",
        type: 'timeseries',
        unit: 'short',
        queries: [
          {
            expr: `sum(kube_pod_status_phase{phase="Pending", namespace="$namespace"} * on (namespace, pod) group_left () max by (namespace, pod) (${PODS}))`,
            legend: 'pending',
          },
          { expr: ofJobs('kube_job_status_active{namespace="$namespace"}'), legend: 'running' },
          { expr: ofJobs('kube_job_status_succeeded{namespace="$namespace"}'), legend: 'succeeded' },
          { expr: ofJobs('kube_job_failed{condition="true", namespace="$namespace"}'), legend: 'failed' },
        ],
      },
      {
        title: 'Jobs created',
        description: 'Jobs of the ScaledJob seen in the time range, deleted ones included.',
        type: 'stat',
        unit: 'short',
        queries: [
          {
            expr: 'count(max by (namespace, job_name) (max_over_time(kube_job_owner{owner_kind="ScaledJob", owner_name="$scaledjob", namespace="$namespace"}[$__range])))',
            legend: 'Jobs',
          },
        ],
      },
      {
        title: 'Outcomes in the range',
        description:
          "What became of the requests, from each worker's report: finished, dead_lettered, requeued, unsettled (the connection was lost while held), failed. Exact counts (first to last sample of each series in the range; increase() would extrapolate to the range's ends); a scaler process restarted in place within the range is counted from its restart only.",
        type: 'stat',
        unit: 'short',
        queries: [
          {
            expr: 'sum by (outcome) (max_over_time(kmj_requests_total{name="$queue"}[$__range]) - min_over_time(kmj_requests_total{name="$queue"}[$__range]))',
            legend: '{{outcome}}',
          },
        ],
      },
      {
        title: 'Outcomes a minute',
        description: 'The same outcomes as a rate.',
        type: 'timeseries',
        unit: 'short',
        queries: [{ expr: '60 * sum by (outcome) (rate(kmj_requests_total{name="$queue"}[$__rate_interval]))', legend: '{{outcome}}' }],
      },
    ],
  },
  {
    title: "A request's lifecycle",
    panels: [
      {
        title: 'Steps of a request, p50',
        description:
          "Published → received (waiting: the queue, KEDA's poll, the Job, the pod's start), the worker's start → received, the model load (and its parts: getting the files, opening them), the run to the settle, and received → settled (total).",
        type: 'timeseries',
        unit: 's',
        queries: [{ expr: steps(0.5), legend: '{{step}}' }],
      },
      {
        title: 'Steps of a request, p95',
        description: 'The same steps, 95th percentile.',
        type: 'timeseries',
        unit: 's',
        queries: [{ expr: steps(0.95), legend: '{{step}}' }],
      },
      {
        title: 'Job created → pod started',
        description:
          "For the ScaledJob's pods now present: the time from their Job's creation to the pod's start (kube-state-metrics, whole seconds), median and slowest.",
        type: 'timeseries',
        unit: 's',
        queries: [
          { expr: `quantile(0.5, ${POD_DELAY})`, legend: 'median' },
          { expr: `max(${POD_DELAY})`, legend: 'slowest' },
        ],
      },
    ],
  },
  {
    title: 'Scaler and KEDA',
    panels: [
      {
        title: 'Scaler RPCs',
        description: "KEDA's calls to the scaler a second, by method and gRPC status.",
        type: 'timeseries',
        unit: 'reqps',
        queries: [
          { expr: 'sum by (method, code) (rate(kmj_scaler_grpc_requests_total[$__rate_interval]))', legend: '{{method}} {{code}}' },
        ],
      },
      {
        title: 'Scaler RPC latency, p95',
        description: 'Time the scaler takes to answer, by method (it answers from its cache).',
        type: 'timeseries',
        unit: 's',
        queries: [
          {
            expr: 'histogram_quantile(0.95, sum by (le, method) (rate(kmj_scaler_grpc_request_duration_seconds_bucket[$__rate_interval])))',
            legend: '{{method}}',
          },
        ],
      },
      {
        title: 'Broker reads',
        description: 'Whether the scaler can read the queue (1: yes), and its failed broker reads a second by reason.',
        type: 'timeseries',
        unit: 'short',
        queries: [
          { expr: 'min by (name) (kmj_scaler_target_up{name="$queue"})', legend: '{{name}} readable' },
          { expr: 'sum by (reason) (rate(kmj_scaler_refresh_errors_total[$__rate_interval]))', legend: 'errors: {{reason}}' },
        ],
      },
      {
        title: "KEDA's errors for the ScaledJob",
        description: "Errors KEDA's operator counts for the trigger and the ScaledJob, a second.",
        type: 'timeseries',
        unit: 'short',
        queries: [
          {
            expr: 'sum by (scaledObject) (rate(keda_scaler_detail_errors_total{type="scaledjob", scaledObject="$scaledjob", exported_namespace="$namespace"}[$__rate_interval]))',
            legend: 'trigger',
          },
          {
            expr: 'sum by (scaledJob) (rate(keda_scaled_job_errors_total{scaledJob="$scaledjob", exported_namespace="$namespace"}[$__rate_interval]))',
            legend: 'ScaledJob',
          },
        ],
      },
      {
        title: 'READY',
        description:
          "The ScaledJob's Ready condition, as kubectl get scaledjob shows it (kube-state-metrics, monitoring/kube-state-metrics-scaledjob.yaml).",
        type: 'stat',
        unit: 'short',
        queries: [
          {
            expr: 'max by (status) (kmj_scaledjob_condition_info{condition="Ready", scaledjob="$scaledjob", scaledjob_namespace="$namespace"})',
            legend: '{{status}}',
          },
        ],
      },
    ],
  },
];

const queryVariable = (name: string, label: string, query: string): VariableModel => ({
  name,
  label,
  type: 'query',
  datasource: DS,
  query: { qryType: 1, query, refId: `PrometheusVariableQueryEditor-VariableQuery-${name}` },
  refresh: 2,
  sort: 1,
  includeAll: false,
  multi: false,
});

export const VARIABLES: readonly VariableModel[] = [
  { name: 'datasource', label: 'Prometheus', type: 'datasource', query: 'prometheus', refresh: 1 },
  queryVariable('namespace', 'Namespace', 'label_values(kmj_scaler_target_info, scaledjob_namespace)'),
  queryVariable('scaledjob', 'ScaledJob', 'label_values(kmj_scaler_target_info{scaledjob_namespace="$namespace"}, scaledjob)'),
  queryVariable('queue', 'Queue', 'label_values(kmj_scaler_target_info{scaledjob_namespace="$namespace", scaledjob="$scaledjob"}, name)'),
];

const WIDTH = 24;

export function dashboard(): Dashboard {
  const panels: Array<Panel | RowPanel> = [];
  let id = 1;
  let y = 0;
  for (const row of ROWS) {
    panels.push({ type: 'row', title: row.title, collapsed: false, id: id++, gridPos: { h: 1, w: WIDTH, x: 0, y }, panels: [] });
    y += 1;
    const w = Math.floor(WIDTH / Math.min(row.panels.length, 3));
    row.panels.forEach((p, i) => {
      const panel: Panel = {
        type: p.type,
        title: p.title,
        description: p.description,
        id: id++,
        datasource: DS,
        gridPos: { h: 8, w, x: (i % 3) * w, y: y + Math.floor(i / 3) * 8 },
        fieldConfig: { defaults: { unit: p.unit }, overrides: [] },
        options:
          p.type === 'stat'
            ? { reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false }, textMode: 'value_and_name' }
            : { legend: { displayMode: 'list', placement: 'bottom', showLegend: true } },
        targets: p.queries.map((q, j) => ({
          refId: String.fromCharCode(65 + j),
          datasource: DS,
          expr: q.expr,
          legendFormat: q.legend,
          range: p.type !== 'stat',
          instant: p.type === 'stat',
        })),
      };
      panels.push(panel);
    });
    y += Math.ceil(row.panels.length / 3) * 8;
  }
  return {
    title: 'keda-ml-jobs: requests, Jobs and the scaler',
    uid: 'keda-ml-jobs',
    description: 'Every request from the queue to its MLflow run, per KEDA ScaledJob (docs/observability.md)',
    tags: ['keda', 'keda-ml-jobs', 'rabbitmq'],
    editable: true,
    graphTooltip: 1,
    schemaVersion: 41,
    version: 1,
    refresh: '30s',
    time: { from: 'now-1h', to: 'now' },
    timezone: 'browser',
    templating: { list: [...VARIABLES] },
    annotations: { list: [] },
    links: [],
    panels,
  };
}

export const dashboardText = (): string => `${JSON.stringify(dashboard(), null, 2)}\n`;
