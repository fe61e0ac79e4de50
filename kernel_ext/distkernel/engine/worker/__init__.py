"""The worker process: its loop, its mailbox, its output streams, and the API a task
calls in it. Started as ``python -m distkernel.engine.worker``."""
