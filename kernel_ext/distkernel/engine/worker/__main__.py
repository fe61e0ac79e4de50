"""``python -m distkernel.engine.worker ...``: a worker process (see ``loop.main``)."""

import sys

from distkernel.engine.worker.loop import main

main(sys.argv[1:])
