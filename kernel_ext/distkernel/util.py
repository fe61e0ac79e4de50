"""``distkernel.util``: Ray's ``ray.util`` names (kept here, where users import them)."""

from distkernel.api.util import *  # noqa: F403
from distkernel.api.util import __all__  # noqa: F401
