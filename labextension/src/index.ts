/**
 * distkernel's JupyterLab extension: the cluster side panel and its commands.
 */
import {
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, InputDialog } from '@jupyterlab/apputils';
import { ConsolePanel, IConsoleTracker } from '@jupyterlab/console';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { ClusterPanel, IKernelHost } from './panel';

const ICON_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 16 16">' +
  '<g class="jp-icon3" fill="#616161">' +
  '<rect x="1" y="2" width="6" height="3" rx="1"/><rect x="9" y="2" width="6" height="3" rx="1"/>' +
  '<rect x="1" y="7" width="9" height="3" rx="1"/><rect x="12" y="7" width="3" height="3" rx="1"/>' +
  '<rect x="1" y="12" width="4" height="3" rx="1"/><rect x="7" y="12" width="8" height="3" rx="1"/>' +
  '</g></svg>';

export const clusterIcon = new LabIcon({ name: 'distkernel:cluster', svgstr: ICON_SVG });

const COMMANDS = {
  show: 'distkernel:show-cluster',
  restart: 'distkernel:restart-workers',
  scale: 'distkernel:scale-workers'
};

function hostOf(widget: Widget | null): IKernelHost | null {
  if (widget instanceof NotebookPanel || widget instanceof ConsolePanel) {
    return { widget, session: widget.sessionContext };
  }
  return null;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'distkernel-panel:plugin',
  description: 'The distkernel cluster panel: workers, actors, tasks and the object store.',
  autoStart: true,
  requires: [ILabShell],
  optional: [INotebookTracker, IConsoleTracker, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    shell: ILabShell,
    notebooks: INotebookTracker | null,
    consoles: IConsoleTracker | null,
    palette: ICommandPalette | null
  ) => {
    const panel = new ClusterPanel();
    panel.title.icon = clusterIcon;
    shell.add(panel, 'right', { rank: 900 });

    // Follow the notebook or console in front; keep the last one when another kind
    // of widget (a file browser, a text editor) comes to the front.
    const follow = () => {
      const host = hostOf(shell.currentWidget);
      if (host !== null) {
        panel.follow(host);
      }
    };
    shell.currentChanged.connect(follow);
    notebooks?.widgetAdded.connect(follow);
    consoles?.widgetAdded.connect(follow);
    app.restored.then(follow).catch(() => undefined);

    app.commands.addCommand(COMMANDS.show, {
      label: 'Show distkernel cluster',
      icon: clusterIcon,
      execute: () => shell.activateById(panel.id)
    });
    app.commands.addCommand(COMMANDS.restart, {
      label: 'Restart workers',
      execute: () => {
        shell.activateById(panel.id);
        panel.request({ action: 'restart' });
      }
    });
    app.commands.addCommand(COMMANDS.scale, {
      label: 'Scale workers…',
      execute: async () => {
        shell.activateById(panel.id);
        const result = await InputDialog.getNumber({
          title: 'Scale the distkernel pool to how many workers?',
          value: panel.workers ?? 2
        });
        const workers = result.value;
        if (result.button.accept && workers !== null && Number.isInteger(workers) && workers >= 1) {
          panel.request({ action: 'scale', workers });
        }
      }
    });
    if (palette) {
      for (const command of Object.values(COMMANDS)) {
        palette.addItem({ command, category: 'distkernel' });
      }
    }
  }
};

export default plugin;
