/**
 * The messages of the `distkernel` comm, as the kernel sends them
 * (kernel_ext/distkernel/front/panel_model.py and panel.py).
 */

/** The update shape this panel understands (`version` in every update). */
export const UPDATE_VERSION = 1;

export interface IWorker {
  id: number;
  pid: number | null;
  state: 'starting' | 'idle' | 'busy' | 'blocked' | 'stopping' | 'dead';
  task: string | null;
  task_id: string | null;
  since: number | null; // epoch seconds the current task began
  actor: string | null;
  extra: boolean;
  cpu: number | null;
  rss: number | null;
}

export interface IActor {
  id: string;
  class: string;
  name: string;
  state: 'starting' | 'alive' | 'dead';
  worker: number | null;
  queued: number;
  restarts: number;
}

export interface IStore {
  capacity: number;
  used: number;
  objects: number;
  spilled_bytes: number;
  spilled_objects: number;
  largest: { id: string; bytes: number; made_by: string; cell: number | null }[];
}

/**
 * A machine of a multi-node cluster (Ray): its tasks' `worker` is its `index`. CPUs and
 * GPUs in units, memory and object store in bytes; `*_free` is what is not taken.
 */
export interface INode {
  index: number;
  id: string;
  address: string;
  alive: boolean;
  cpus: number;
  cpus_free: number;
  gpus: number;
  gpus_free: number;
  memory: number;
  memory_free: number;
  store: number;
  store_free: number;
}

export interface ICluster {
  backend: string;
  cluster_id: string;
  started_at: number;
  taken_at: number;
  num_workers: number;
  queued: number;
  running: number;
  workers: IWorker[];
  actors: IActor[];
  store: IStore;
  counters: { submitted: number; finished: number; failed: number; cancelled: number };
  /**
   * Shown in place of the workers table when not empty: on Ray the workers are its
   * nodes. Absent from kernels older than the node table.
   */
  nodes?: INode[];
}

export interface ITask {
  id: string;
  name: string;
  kind: string;
  worker: number | null;
  submitted: number;
  started: number | null;
  finished: number | null;
  status: 'pending' | 'running' | 'finished' | 'failed' | 'cancelled';
  bytes_in: number;
  bytes_out: number;
  error: string | null;
  cell: number | null;
}

/** [worker, start, end (null: running), name, status] */
export type Bar = [number, number, number | null, string, string];

export interface IUpdate {
  type: 'update';
  version: number;
  cluster: ICluster | null;
  tasks: ITask[];
  stream: Bar[];
  rate: number | null;
}

export interface IReply {
  type: 'reply';
  request: string | null;
  ok: boolean;
  message?: string;
  error?: string;
}

export type KernelMessage = IUpdate | IReply;

/** What the panel asks of the kernel. */
export type Action =
  | { action: 'scale'; workers: number }
  | { action: 'restart' }
  | { action: 'cancel'; task_id: string }
  | { action: 'kill_actor'; actor_id: string }
  | { action: 'refresh' };

/** A message from the kernel, checked: anything else is ignored. */
export function parseMessage(data: unknown): KernelMessage | null {
  if (typeof data !== 'object' || data === null) {
    return null;
  }
  const message = data as { type?: unknown; version?: unknown };
  if (message.type === 'update' && message.version === UPDATE_VERSION) {
    return data as IUpdate;
  }
  if (message.type === 'reply') {
    return data as IReply;
  }
  return null;
}
