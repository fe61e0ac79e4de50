"""Ray's ``ray.actor`` names, so that ``ray.actor.exit_actor()`` and
``from ray.actor import ActorHandle`` run unchanged with ``import distkernel as ray``."""

from distkernel.api.actors import ActorClass, ActorHandle, ActorMethod, exit_actor, method

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "exit_actor", "method"]
