"""Named actors, as in Ray: a name in a namespace is taken while its actor lives.

``C.options(name="hi").remote()`` takes "hi" in the cluster's namespace (or the one
given); ``get_actor("hi")`` finds it, from the driver or from inside a task. The name
is free again as soon as its actor is dead or killed, even while handles to the dead
actor remain, and ``get_if_exists=True`` returns the live actor instead of failing:
the idiom for re-running a notebook cell. Called under the engine's lock.
"""

from __future__ import annotations

from collections.abc import Callable

from distkernel.core.protocol import ActorOptions

Key = tuple[str, str]  # (namespace, name)


class ActorNames:
    def __init__(self, default_namespace: str, is_alive: Callable[[str], bool]) -> None:
        self._default = default_namespace
        self._is_alive = is_alive
        self._ids: dict[Key, str] = {}

    def key(self, name: str, namespace: str | None) -> Key:
        return (self._default if namespace is None or namespace == "" else namespace, name)

    def lookup(self, name: str, namespace: str | None) -> str | None:
        """The live actor with this name, or None (a dead one's name is let go)."""
        key = self.key(name, namespace)
        actor_id = self._ids.get(key)
        if actor_id is not None and not self._is_alive(actor_id):
            del self._ids[key]
            return None
        return actor_id

    def claim(self, options: ActorOptions) -> str | None:
        """Before creating a named actor: the live one to use instead (``get_if_exists``),
        or None to go on; ValueError if the name is taken."""
        existing = self.lookup(options.name, options.namespace)
        if existing is None or options.get_if_exists:
            return existing
        namespace = self.key(options.name, options.namespace)[0]
        where = f" in namespace {namespace!r}" if namespace else ""
        msg = (f"an actor named {options.name!r}{where} already exists; pick another name, "
               f"get it with get_actor({options.name!r}), or pass get_if_exists=True to "
               f"reuse it")
        raise ValueError(msg)

    def register(self, options: ActorOptions, actor_id: str) -> None:
        self._ids[self.key(options.name, options.namespace)] = actor_id

    def release(self, actor_id: str) -> None:
        """The actor is dead, killed or gone: its name may be used again."""
        for key in [k for k, v in self._ids.items() if v == actor_id]:
            del self._ids[key]
