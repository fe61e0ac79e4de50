"""``distkernel.actor``: Ray's ``ray.actor`` names (kept here, where users import them)."""

from distkernel.api.actor import *  # noqa: F403
from distkernel.api.actor import __all__  # noqa: F401
