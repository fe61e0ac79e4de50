/**
 * The side panel: follows the current notebook's or console's kernel, shows what its
 * distkernel cluster does (updated while cells run), and sends the actions.
 */
import { ISessionContext } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { KernelLink, LinkState } from './link';
import { Action, IReply, IUpdate } from './messages';
import { escape, renderUpdate } from './render';

/** A notebook or console: something with a kernel session. */
export interface IKernelHost {
  widget: Widget;
  session: ISessionContext;
}

const STATE_TEXT: Record<LinkState, string> = {
  'no-kernel': 'No kernel: open a notebook or console.',
  connecting: 'Connecting to the kernel…',
  connected: '',
  'not-loaded': 'distkernel is not loaded in this kernel.'
};

export class ClusterPanel extends Widget {
  constructor() {
    super();
    this.id = 'distkernel-panel';
    this.addClass('jp-Distkernel-panel');
    this.title.caption = 'distkernel cluster';
    this.node.innerHTML =
      '<div class="jp-Distkernel-header">' +
      '<div class="jp-Distkernel-title">distkernel <span class="jp-Distkernel-kernel"></span></div>' +
      '<div class="jp-Distkernel-actions">' +
      '<label class="jp-Distkernel-scale">workers <input class="jp-Distkernel-scaleInput" type="number" min="1" max="1024"></label>' +
      '<button class="jp-Distkernel-button jp-Distkernel-scale" data-action="scale">Scale</button>' +
      '<button class="jp-Distkernel-button" data-action="restart">Restart</button>' +
      '</div><div class="jp-Distkernel-notice" role="status"></div></div>' +
      '<div class="jp-Distkernel-state"></div>' +
      '<div class="jp-Distkernel-body"></div>';
    this.node.addEventListener('click', event => this._onClick(event));
    this._showState();
  }

  /** Follow another notebook or console (null: none is current). */
  follow(host: IKernelHost | null): void {
    if (host?.session === this._host?.session) {
      return;
    }
    this._link?.dispose();
    this._link = null;
    this._host = host;
    this._last = null;
    this._body.innerHTML = '';
    if (host !== null) {
      const link = new KernelLink(host.session);
      link.stateChanged.connect(() => this._showState());
      link.updated.connect((_, update) => this._show(update));
      link.replied.connect((_, reply) => this._onReply(reply));
      this._link = link;
      if (this.isVisible) {
        void link.connect();
      }
    }
    this._showState();
  }

  /** Ask the kernel something (the command palette's entries come here too). */
  request(action: Action): boolean {
    const request = this._link?.send(action) ?? null;
    if (request === null) {
      this._notice('Not connected to a kernel with distkernel loaded.', true);
      return false;
    }
    this._notice(`${action.action}…`, false);
    return true;
  }

  get workers(): number | null {
    return this._last?.cluster?.num_workers ?? null;
  }

  protected onAfterShow(): void {
    void this._link?.connect();
  }

  protected onAfterHide(): void {
    // No panel open, no updates: the kernel stops pushing when its comm closes.
    this._link?.dispose();
    if (this._host !== null) {
      const host = this._host;
      this._host = null;
      this.follow(host);
    }
  }

  private _show(update: IUpdate): void {
    this._last = update;
    const now = update.cluster?.taken_at ?? Date.now() / 1000;
    this._body.innerHTML = renderUpdate(update, now);
    const input = this._scaleInput;
    if (update.cluster && document.activeElement !== input && !input.value) {
      input.placeholder = String(update.cluster.num_workers);
    }
    // Nodes shown: a Ray cluster, whose size is Ray's (ray start / ray stop, its
    // autoscaler); the kernel would refuse to scale it, so the panel does not offer to.
    const onNodes = (update.cluster?.nodes ?? []).length > 0;
    this.node.querySelectorAll<HTMLElement>('.jp-Distkernel-scale').forEach(element => {
      element.hidden = onNodes;
    });
  }

  private _showState(): void {
    const state = this._link?.state ?? 'no-kernel';
    const node = this.node.querySelector('.jp-Distkernel-state') as HTMLElement;
    node.dataset.state = state;
    const text = STATE_TEXT[state];
    node.innerHTML =
      state === 'not-loaded'
        ? `${escape(text)} <button class="jp-Distkernel-button" data-action="load">Run %load_ext distkernel</button>`
        : escape(text);
    const kernel = this.node.querySelector('.jp-Distkernel-kernel') as HTMLElement;
    kernel.textContent = this._host ? `· ${this._host.session.kernelDisplayName}` : '';
    if (state !== 'connected') {
      this._body.innerHTML = '';
    }
  }

  private _onClick(event: MouseEvent): void {
    const target = (event.target as HTMLElement).closest('[data-action]') as HTMLElement | null;
    if (!target) {
      return;
    }
    const action = target.dataset.action;
    if (action === 'scale') {
      const workers = Number(this._scaleInput.value || this._scaleInput.placeholder);
      if (!Number.isInteger(workers) || workers < 1 || workers > 1024) {
        this._notice('Give a whole number of workers from 1 to 1024.', true);
        return;
      }
      this.request({ action: 'scale', workers });
      this._scaleInput.value = '';
    } else if (action === 'restart') {
      this.request({ action: 'restart' });
    } else if (action === 'cancel' && target.dataset.task) {
      this.request({ action: 'cancel', task_id: target.dataset.task });
    } else if (action === 'kill_actor' && target.dataset.actor) {
      this.request({ action: 'kill_actor', actor_id: target.dataset.actor });
    } else if (action === 'load') {
      void this._link?.loadExtension();
    } else if (action === 'goto-cell' && target.dataset.cell) {
      this._gotoCell(Number(target.dataset.cell));
    }
  }

  private _gotoCell(executionCount: number): void {
    const widget = this._host?.widget;
    if (!(widget instanceof NotebookPanel)) {
      return;
    }
    const notebook = widget.content;
    const index = notebook.widgets.findIndex(
      cell =>
        cell.model.type === 'code' &&
        (cell.model as unknown as { executionCount: number | null }).executionCount ===
          executionCount
    );
    if (index >= 0) {
      notebook.activeCellIndex = index;
      void notebook.scrollToItem(index, 'center');
    } else {
      this._notice(`In [${executionCount}] is no longer in this notebook.`, true);
    }
  }

  private _onReply(reply: IReply): void {
    this._notice(reply.ok ? reply.message ?? 'done' : reply.error ?? 'failed', !reply.ok);
  }

  private _notice(text: string, error: boolean): void {
    const node = this.node.querySelector('.jp-Distkernel-notice') as HTMLElement;
    node.textContent = text;
    node.classList.toggle('jp-Distkernel-noticeError', error);
  }

  private get _body(): HTMLElement {
    return this.node.querySelector('.jp-Distkernel-body') as HTMLElement;
  }

  private get _scaleInput(): HTMLInputElement {
    return this.node.querySelector('.jp-Distkernel-scaleInput') as HTMLInputElement;
  }

  private _host: IKernelHost | null = null;
  private _link: KernelLink | null = null;
  private _last: IUpdate | null = null;
}
