"""``distkernel.exceptions``: the public error tree (SPEC §5), where users import it."""

from distkernel.core.exceptions import *  # noqa: F403
from distkernel.core.exceptions import __all__  # noqa: F401
