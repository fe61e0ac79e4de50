/**
 * Drawing one update: pure functions from an update to HTML. Every text from the kernel
 * goes through `escape`; buttons carry `data-action` and are handled by the panel.
 */
import { Bar, ICluster, INode, ITask, IUpdate, IWorker } from './messages';

/** Seconds of task stream shown (the kernel sends the last minute). */
export const STREAM_SECONDS = 60;

const PALETTE = [
  '#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2',
  '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#86bcb6'
];

export function escape(text: string): string {
  return text
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

export function formatBytes(bytes: number | null): string {
  if (bytes === null) {
    return '–';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${units[unit]}`;
}

export function formatSeconds(seconds: number | null): string {
  if (seconds === null || seconds < 0) {
    return '–';
  }
  if (seconds < 1e-3) {
    return `${Math.round(seconds * 1e6)} µs`;
  }
  if (seconds < 1) {
    return `${Math.round(seconds * 1e3)} ms`;
  }
  if (seconds < 120) {
    return `${seconds.toFixed(1)} s`;
  }
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

/** CPUs or GPUs: whole amounts as they are, fractions (Ray's `num_cpus=0.5`) to a tenth. */
export function formatAmount(amount: number): string {
  return Number.isInteger(amount) ? String(amount) : amount.toFixed(1);
}

/** What a lane of the stream and a task's `worker` stand for: a worker, or a node on Ray. */
type Place = 'worker' | 'node';

/** One colour per function name, the same in the chart and its legend. */
export function colourOf(name: string, names: string[]): string {
  const index = names.indexOf(name);
  return PALETTE[(index < 0 ? 0 : index) % PALETTE.length];
}

function counters(update: IUpdate, cluster: ICluster): string {
  const c = cluster.counters;
  const rate = update.rate === null ? '–' : update.rate.toFixed(update.rate < 10 ? 1 : 0);
  const cells: [string, string, string][] = [
    ['done', String(c.finished), 'finished'],
    ['running', String(cluster.running), 'running'],
    ['queued', String(cluster.queued), 'queued'],
    ['failed', String(c.failed), 'failed'],
    ['tasks/s', rate, 'rate']
  ];
  return (
    '<div class="jp-Distkernel-counters">' +
    cells
      .map(
        ([label, value, key]) =>
          `<div class="jp-Distkernel-counter" data-counter="${key}">` +
          `<span class="jp-Distkernel-counterValue">${escape(value)}</span>` +
          `<span class="jp-Distkernel-counterLabel">${label}</span></div>`
      )
      .join('') +
    '</div>'
  );
}

function store(cluster: ICluster): string {
  const s = cluster.store;
  const share = s.capacity > 0 ? Math.min(1, s.used / s.capacity) : 0;
  const spilled = s.spilled_objects
    ? ` · ${s.spilled_objects} spilled (${formatBytes(s.spilled_bytes)})`
    : '';
  const largest = s.largest
    .map(
      o =>
        `<tr><td class="jp-Distkernel-num">${formatBytes(o.bytes)}</td>` +
        `<td class="jp-Distkernel-taskName">${escape(o.made_by || '–')}</td><td>${
          o.cell !== null
            ? `<a class="jp-Distkernel-cellLink" data-action="goto-cell" data-cell="${o.cell}" title="Show this cell">In&nbsp;[${o.cell}]</a>`
            : ''
        }</td></tr>`
    )
    .join('');
  const largestTable = largest
    ? '<table class="jp-Distkernel-table jp-Distkernel-largest"><thead><tr>' +
      '<th class="jp-Distkernel-num">largest</th><th>made by</th><th>cell</th></tr></thead>' +
      `<tbody>${largest}</tbody></table>`
    : '';
  return (
    '<section class="jp-Distkernel-section jp-Distkernel-store">' +
    '<h3>Object store</h3>' +
    `<div class="jp-Distkernel-bar" title="${(share * 100).toFixed(1)} % used">` +
    `<div class="jp-Distkernel-barFill" style="width:${(share * 100).toFixed(1)}%"></div></div>` +
    `<div class="jp-Distkernel-storeText">${formatBytes(s.used)} of ${formatBytes(s.capacity)}` +
    ` · ${s.objects} objects${spilled}</div>${largestTable}</section>`
  );
}

function workerRow(worker: IWorker, now: number, actorClass: Map<string, string>): string {
  const running =
    worker.task !== null
      ? `${escape(worker.task)}&nbsp;<span class="jp-Distkernel-dim">${formatSeconds(
          worker.since === null ? null : now - worker.since
        )}</span>`
      : '';
  const role = worker.actor
    ? `${escape(actorClass.get(worker.actor) ?? 'actor')} actor`
    : worker.extra
      ? 'extra'
      : '';
  const cpu = worker.cpu === null ? '–' : `${Math.round(worker.cpu)} %`;
  const cancel =
    worker.task_id !== null
      ? `<button class="jp-Distkernel-small" data-action="cancel" data-task="${escape(
          worker.task_id
        )}" title="Cancel this task" aria-label="cancel">×</button>`
      : '';
  return (
    `<tr data-worker="${worker.id}"${worker.pid === null ? '' : ` title="process ${worker.pid}"`}>` +
    `<td>${worker.id}</td>` +
    `<td><span class="jp-Distkernel-state jp-Distkernel-state-${worker.state}">${worker.state}</span></td>` +
    `<td>${role}</td><td class="jp-Distkernel-task">${running}</td>` +
    `<td class="jp-Distkernel-num">${cpu}</td><td class="jp-Distkernel-num">${formatBytes(
      worker.rss
    )}</td><td>${cancel}</td></tr>`
  );
}

function workers(cluster: ICluster, now: number): string {
  const actorClass = new Map(cluster.actors.map(a => [a.id, a.class]));
  const rows = cluster.workers.map(w => workerRow(w, now, actorClass)).join('');
  return (
    '<section class="jp-Distkernel-section jp-Distkernel-workers">' +
    `<h3>Workers <span class="jp-Distkernel-dim">(pool of ${cluster.num_workers})</span></h3>` +
    '<table class="jp-Distkernel-table"><thead><tr><th>#</th><th>state</th><th></th>' +
    '<th>task</th><th class="jp-Distkernel-num">CPU</th><th class="jp-Distkernel-num">RSS</th>' +
    '<th></th></tr></thead>' +
    `<tbody>${rows}</tbody></table></section>`
  );
}

function nodeRow(node: INode, withGpus: boolean): string {
  const state = node.alive ? 'alive' : 'dead';
  const used = (total: number, free: number) => Math.max(0, total - free);
  const amount = (total: number, free: number) =>
    `<td class="jp-Distkernel-num">${formatAmount(used(total, free))}&nbsp;/ ${formatAmount(total)}</td>`;
  const reserved = used(node.memory, node.memory_free);
  return (
    `<tr data-node="${node.index}" title="node id ${escape(node.id)}">` +
    `<td>${node.index}</td>` +
    `<td>${escape(node.address)}</td>` +
    `<td><span class="jp-Distkernel-state jp-Distkernel-state-${state}">${state}</span></td>` +
    amount(node.cpus, node.cpus_free) +
    (withGpus ? amount(node.gpus, node.gpus_free) : '') +
    `<td class="jp-Distkernel-num">${formatBytes(used(node.store, node.store_free))}&nbsp;/ ${formatBytes(
      node.store
    )}</td>` +
    `<td class="jp-Distkernel-num" title="${formatBytes(reserved)} reserved by tasks">${formatBytes(
      node.memory
    )}</td></tr>`
  );
}

/** On Ray, in place of the workers: a task's worker there is its node (see panel_model). */
function nodes(list: INode[]): string {
  const withGpus = list.some(n => n.gpus > 0);
  const alive = list.filter(n => n.alive);
  const cpus = alive.reduce((sum, n) => sum + n.cpus, 0);
  const dead = list.length - alive.length;
  const summary =
    `${alive.length} ${alive.length === 1 ? 'node' : 'nodes'}, ${formatAmount(cpus)} CPUs` +
    (dead ? `, ${dead} dead` : '');
  return (
    '<section class="jp-Distkernel-section jp-Distkernel-nodes">' +
    `<h3>Nodes <span class="jp-Distkernel-dim">(${summary})</span></h3>` +
    // Scrolls sideways in a narrow sidebar rather than squeezing the numbers; memory (what
    // tasks may reserve, rarely all taken) comes last, as the least telling.
    '<div class="jp-Distkernel-scroll"><table class="jp-Distkernel-table"><thead><tr>' +
    '<th>#</th><th>address</th><th>state</th>' +
    '<th class="jp-Distkernel-num" title="used / total">CPUs</th>' +
    (withGpus ? '<th class="jp-Distkernel-num" title="used / total">GPUs</th>' : '') +
    '<th class="jp-Distkernel-num" title="object store: used / total">store</th>' +
    '<th class="jp-Distkernel-num">memory</th>' +
    `</tr></thead><tbody>${list.map(n => nodeRow(n, withGpus)).join('')}</tbody></table>` +
    '</div></section>'
  );
}

function actors(cluster: ICluster, place: Place): string {
  if (cluster.actors.length === 0) {
    return '';
  }
  const rows = cluster.actors
    .map(
      a =>
        `<tr data-actor="${escape(a.id)}"><td>${escape(a.class)}</td><td>${escape(a.name)}</td>` +
        `<td><span class="jp-Distkernel-state jp-Distkernel-state-${a.state}">${a.state}</span></td>` +
        `<td>${a.worker ?? '–'}</td><td class="jp-Distkernel-num">${a.queued}</td>` +
        `<td>${
          a.state === 'dead'
            ? ''
            : `<button class="jp-Distkernel-small" data-action="kill_actor" data-actor="${escape(
                a.id
              )}" title="Kill this actor">kill</button>`
        }</td></tr>`
    )
    .join('');
  return (
    '<section class="jp-Distkernel-section jp-Distkernel-actors"><h3>Actors</h3>' +
    '<table class="jp-Distkernel-table"><thead><tr><th>class</th><th>name</th><th>state</th>' +
    `<th>${place}</th><th>queued</th><th></th></tr></thead><tbody>${rows}</tbody></table></section>`
  );
}

/** The task stream of the last minute: one lane per worker (node), bars coloured by function. */
function stream(bars: Bar[], cluster: ICluster, now: number, place: Place): string {
  const lanes = cluster.workers.map(w => w.id);
  for (const bar of bars) {
    if (!lanes.includes(bar[0])) {
      lanes.push(bar[0]);
    }
  }
  lanes.sort((a, b) => a - b);
  const names = Array.from(new Set(bars.map(b => b[3]))).sort();
  const width = 300;
  const lane = 14;
  const left = 28;
  const height = Math.max(1, lanes.length) * lane;
  // The last minute at most, from the first bar shown: a few seconds of tasks fill the width.
  const first = Math.min(now - 1, ...bars.map(b => b[1]));
  const start = Math.max(now - STREAM_SECONDS, first);
  const x = (t: number) => left + ((t - start) / (now - start)) * (width - left);
  const rects = bars
    .map(([worker, start, end, name, status]) => {
      const x0 = Math.max(left, x(start));
      // A pixel's gap between one task and the next on a lane.
      const x1 = Math.max(x0 + 1, x(end === null ? now : end) - 1);
      const y = lanes.indexOf(worker) * lane + 2;
      const failed = status === 'failed' || status === 'cancelled' ? ' jp-Distkernel-failedBar' : '';
      return (
        `<rect class="jp-Distkernel-streamBar${failed}" x="${x0.toFixed(1)}" y="${y}" ` +
        `width="${(x1 - x0).toFixed(1)}" height="${lane - 4}" fill="${colourOf(name, names)}">` +
        `<title>${escape(name)} on ${place} ${worker}: ${status}</title></rect>`
      );
    })
    .join('');
  const labels = lanes
    .map(
      (id, i) =>
        `<text class="jp-Distkernel-laneLabel" x="0" y="${i * lane + lane - 3}">${place[0]}${id}</text>`
    )
    .join('');
  const legend = names
    .map(
      name =>
        `<span class="jp-Distkernel-legendItem"><span class="jp-Distkernel-swatch" ` +
        `style="background:${colourOf(name, names)}"></span>${escape(name)}</span>`
    )
    .join('');
  return (
    '<section class="jp-Distkernel-section jp-Distkernel-stream">' +
    `<h3>Task stream <span class="jp-Distkernel-dim">(last ${formatSeconds(now - start)})</span></h3>` +
    `<svg class="jp-Distkernel-streamChart" viewBox="0 0 ${width} ${height}" ` +
    `width="100%" height="${height}" preserveAspectRatio="none">${labels}${rects}</svg>` +
    `<div class="jp-Distkernel-legend">${legend || '<span class="jp-Distkernel-dim">no tasks in the last minute</span>'}</div>` +
    '</section>'
  );
}

function taskRow(task: ITask, place: Place): string {
  const queue = task.started !== null ? task.started - task.submitted : null;
  const run =
    task.started !== null && task.finished !== null ? task.finished - task.started : null;
  const cell =
    task.cell !== null
      ? `<a class="jp-Distkernel-cellLink" data-action="goto-cell" data-cell="${task.cell}" ` +
        `title="Show this cell">In&nbsp;[${task.cell}]</a>`
      : '';
  const error = task.error
    ? `<div class="jp-Distkernel-error">${escape(task.error)}</div>`
    : '';
  const details =
    `queue ${formatSeconds(queue)} · run ${formatSeconds(run)} · ` +
    `in ${formatBytes(task.bytes_in)} · out ${formatBytes(task.bytes_out)}` +
    (task.worker !== null ? ` · ${place} ${task.worker}` : '');
  return (
    `<tr data-task="${escape(task.id)}" class="jp-Distkernel-task-${task.status}" ` +
    `title="${escape(details)}">` +
    `<td class="jp-Distkernel-taskName">${escape(task.name)}${error}</td><td>${cell}</td>` +
    `<td class="jp-Distkernel-num">${formatSeconds(queue)}</td>` +
    `<td class="jp-Distkernel-num">${formatSeconds(run)}</td>` +
    `<td class="jp-Distkernel-num">${formatBytes(task.bytes_in)}&nbsp;/ ${formatBytes(
      task.bytes_out
    )}</td>` +
    `<td><span class="jp-Distkernel-status jp-Distkernel-status-${task.status}">${task.status}</span></td></tr>`
  );
}

function tasks(list: ITask[], place: Place): string {
  return (
    '<section class="jp-Distkernel-section jp-Distkernel-tasks"><h3>Last tasks</h3>' +
    '<div class="jp-Distkernel-scroll"><table class="jp-Distkernel-table"><thead><tr>' +
    '<th>task</th><th>cell</th><th class="jp-Distkernel-num">queue</th>' +
    '<th class="jp-Distkernel-num">run</th><th class="jp-Distkernel-num">in / out</th>' +
    '<th>status</th></tr></thead>' +
    `<tbody>${list.map(task => taskRow(task, place)).join('')}</tbody></table></div></section>`
  );
}

/**
 * The whole panel body for one update; `now` is the kernel's clock (epoch seconds). When
 * the kernel sends nodes (Ray), they take the workers table's place, and lanes, task rows
 * and the actors table say "node".
 */
export function renderUpdate(update: IUpdate, now: number): string {
  const cluster = update.cluster;
  if (cluster === null) {
    return (
      '<div class="jp-Distkernel-message">No distkernel cluster runs in this kernel. ' +
      'It starts with the next <code>dk.init()</code>, task or <code>%dist init</code>.</div>'
    );
  }
  const nodeList = cluster.nodes ?? [];
  const place: Place = nodeList.length > 0 ? 'node' : 'worker';
  return (
    counters(update, cluster) +
    (place === 'node' ? nodes(nodeList) : workers(cluster, now)) +
    actors(cluster, place) +
    store(cluster) +
    stream(update.stream, cluster, now, place) +
    tasks(update.tasks, place)
  );
}
