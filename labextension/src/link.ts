/**
 * The panel's line to one kernel: the `distkernel` comm, opened again whenever the kernel
 * restarts or changes. JupyterLab (4.4 and later) sends comm messages on a kernel subshell
 * when the kernel has subshells, so actions are carried out while a cell runs.
 */
import { ISessionContext } from '@jupyterlab/apputils';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { Action, IReply, IUpdate, parseMessage } from './messages';

export const COMM_TARGET = 'distkernel';

/** Where the link stands, shown by the panel. */
export type LinkState =
  | 'no-kernel' // the notebook or console has no kernel
  | 'connecting' // comm opened, nothing heard yet
  | 'connected' // updates flow
  | 'not-loaded'; // the kernel closed the comm: distkernel is not loaded there

export class KernelLink {
  constructor(readonly session: ISessionContext) {
    session.kernelChanged.connect(this._reconnect, this);
    session.statusChanged.connect(this._onStatus, this);
    session.iopubMessage.connect(this._onIOPub, this);
  }

  get state(): LinkState {
    return this._state;
  }

  get stateChanged(): ISignal<this, LinkState> {
    return this._stateChanged;
  }

  get updated(): ISignal<this, IUpdate> {
    return this._updated;
  }

  get replied(): ISignal<this, IReply> {
    return this._replied;
  }

  /** Open the comm on the session's kernel (closing an older one). */
  async connect(): Promise<void> {
    this._closeComm();
    await this.session.ready;
    const kernel = this.session.session?.kernel;
    if (!kernel || this._disposed) {
      this._setState('no-kernel');
      return;
    }
    this._open(kernel);
  }

  /** Send an action; its request id, or null when no comm is open. */
  send(action: Action): string | null {
    if (!this._comm || this._comm.isDisposed) {
      return null;
    }
    const request = `r${++this._requests}`;
    this._comm.send({ ...action, request });
    return request;
  }

  /** Run `%load_ext distkernel` in the kernel, then connect again. */
  async loadExtension(): Promise<void> {
    const kernel = this.session.session?.kernel;
    if (!kernel) {
      return;
    }
    const future = kernel.requestExecute({
      code: '%load_ext distkernel',
      silent: false,
      store_history: false
    });
    await future.done;
    await this.connect();
  }

  dispose(): void {
    this._disposed = true;
    this._closeComm();
    Signal.clearData(this);
  }

  private _open(kernel: Kernel.IKernelConnection): void {
    const comm = kernel.createComm(COMM_TARGET);
    this._comm = comm;
    this._heard = false;
    this._setState('connecting');
    comm.onMsg = msg => {
      const message = parseMessage(msg.content.data);
      if (comm !== this._comm || message === null) {
        return;
      }
      if (message.type === 'update') {
        this._heard = true;
        this._setState('connected');
        this._updated.emit(message);
      } else {
        this._replied.emit(message);
      }
    };
    comm.onClose = () => {
      if (comm === this._comm) {
        this._comm = null;
        // Closed before any update: the kernel has no such target (not loaded).
        this._setState(this._heard ? 'connecting' : 'not-loaded');
        if (this._heard && !this._disposed) {
          void this.connect(); // unloaded and reloaded, or a restart: try again
        }
      }
    };
    comm.open({});
  }

  private _closeComm(): void {
    const comm = this._comm;
    this._comm = null;
    if (comm && !comm.isDisposed) {
      try {
        comm.close();
      } catch {
        // the kernel is gone already
      }
    }
  }

  private _reconnect(): void {
    void this.connect();
  }

  private _onStatus(): void {
    const status = this.session.kernelDisplayStatus;
    if (status === 'restarting' || status === 'autorestarting') {
      this._restarting = true;
    } else if (this._restarting && status === 'idle') {
      this._restarting = false;
      void this.connect();
    } else if (this._ranCode && status === 'idle' && this._state === 'not-loaded') {
      // A cell ran since the kernel said it has no distkernel: it may have loaded it
      // (the panel may even have asked while `%load_ext distkernel` was running).
      this._ranCode = false;
      void this.connect();
    }
  }

  private _onIOPub(_: ISessionContext, message: KernelMessage.IMessage): void {
    if (message.header.msg_type === 'execute_input') {
      this._ranCode = true;
    }
  }

  private _setState(state: LinkState): void {
    if (state !== this._state) {
      this._state = state;
      this._stateChanged.emit(state);
    }
  }

  private _comm: Kernel.IComm | null = null;
  private _heard = false;
  private _restarting = false;
  private _ranCode = false;
  private _disposed = false;
  private _requests = 0;
  private _state: LinkState = 'no-kernel';
  private _stateChanged = new Signal<this, LinkState>(this);
  private _updated = new Signal<this, IUpdate>(this);
  private _replied = new Signal<this, IReply>(this);
}
