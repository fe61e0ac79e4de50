"""``%dist status`` and friends: pure rendering of a cluster snapshot and short notices."""

from __future__ import annotations

import html

from distkernel.backends.snapshot import ClusterSnapshot, NodeSnapshot
from distkernel.core.config import format_bytes

_STYLE = (".jp-Distkernel-status table{border-collapse:collapse;font-size:90%}"
          ".jp-Distkernel-status th,.jp-Distkernel-status td{padding:2px 8px;text-align:left;"
          "border-bottom:1px solid var(--jp-border-color2,#ddd)}"
          ".jp-Distkernel-status caption{text-align:left;font-weight:bold;padding:4px 0}")


class Rendered:
    """An object that shows itself as HTML in a notebook and as text elsewhere."""

    def __init__(self, html_text: str, plain: str) -> None:
        self.html_text = html_text
        self.plain = plain

    def _repr_html_(self) -> str:
        return self.html_text

    def __repr__(self) -> str:
        return self.plain


def notice(text: str) -> Rendered:
    """A one-line message (``%dist scale 4`` -> 'scaling to 4 workers')."""
    return Rendered(f'<div class="jp-Distkernel-notice">{html.escape(text)}</div>', text)


def _cpu(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} %"


def _rss(value: int | None) -> str:
    return "—" if value is None else format_bytes(value)


def _table(caption: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><caption>{html.escape(caption)}</caption><tr>{head}</tr>{body}</table>"


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
            for row in [header, *rows]]


def _node_row(node: NodeSnapshot) -> list[str]:
    total, free = dict(node.resources_total), dict(node.resources_available)
    return [f"{node.index} ({node.node_id[:8]})", node.address,
            "alive" if node.alive else "dead",
            f"{free.get('CPU', 0):g} / {total.get('CPU', 0):g}",
            format_bytes(int(total.get("memory", 0))),
            format_bytes(int(total.get("object_store_memory", 0)))]


def status_view(snapshot: ClusterSnapshot) -> Rendered:
    """Workers, actors and the object store, as a table each."""
    store = snapshot.store
    spill_text = (f", {format_bytes(store.spilled_bytes)} in {store.spilled_objects} objects "
                  f"spilled to disk" if store.spilled_bytes else "")
    store_line = (f"object store: {format_bytes(store.used_bytes)} of "
                  f"{format_bytes(store.capacity)} used, {store.num_objects} objects"
                  f"{spill_text}; {snapshot.queued} tasks queued, {snapshot.running} running")
    worker_header = ["worker", "pid", "state", "current task", "cpu", "memory"]
    workers = [[str(w.worker_id) + (" (extra)" if w.extra else "")
                + (" (actor)" if w.actor_id else ""),
                str(w.pid or "—"), w.state, w.current_task or "—",
                _cpu(w.cpu_percent), _rss(w.rss)] for w in snapshot.workers]
    actor_header = ["actor", "name", "state", "pid", "queued calls", "restarts"]
    actors = [[a.class_name, a.name or "—", a.state, str(a.pid or "—"), str(a.queued_calls),
               str(a.restarts)] for a in snapshot.actors]
    title = f"distkernel {snapshot.backend} cluster: {snapshot.num_workers} workers"
    parts = [f"<style>{_STYLE}</style>", f"<b>{html.escape(title)}</b>"]
    text = [title]
    if snapshot.nodes:  # Ray: the machines, then a row per node in place of workers
        title = (f"distkernel {snapshot.backend} cluster: {len(snapshot.nodes)} nodes, "
                 f"{snapshot.num_workers} CPUs")
        parts[1], text[0] = f"<b>{html.escape(title)}</b>", title
        node_header = ["node", "address", "state", "CPUs free / total", "memory",
                       "object store"]
        nodes = [_node_row(node) for node in snapshot.nodes]
        parts.append(_table("nodes", node_header, nodes))
        text += _text_table(node_header, nodes)
    else:
        parts.append(_table("workers", worker_header, workers))
        text += _text_table(worker_header, workers)
    if actors:
        parts.append(_table("actors", actor_header, actors))
        text += ["", *_text_table(actor_header, actors)]
    parts.append(f"<div>{html.escape(store_line)}</div>")
    text += ["", store_line]
    return Rendered(f'<div class="jp-Distkernel-status">{"".join(parts)}</div>', "\n".join(text))
