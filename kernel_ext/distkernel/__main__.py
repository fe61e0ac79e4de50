"""``python -m distkernel install [--user | --sys-prefix | --prefix P]``."""

from __future__ import annotations

import argparse
import sys

from distkernel.front import kernelspec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distkernel",
                                     description="distkernel command line")
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install", help='install the "Python 3 (distkernel)" kernel')
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="for this user (~/.local/share)")
    where.add_argument("--sys-prefix", action="store_true",
                       help=f"into this environment ({sys.prefix})")
    where.add_argument("--prefix", default=None, help="under another prefix, e.g. /usr/local")
    args = parser.parse_args(argv)
    prefix = sys.prefix if args.sys_prefix else args.prefix
    path = kernelspec.install(user=args.user, prefix=prefix)
    print(f"Installed the {kernelspec.DISPLAY_NAME!r} kernelspec in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
