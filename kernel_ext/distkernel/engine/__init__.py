"""Running tasks, independent of any process layout: the pure scheduler and its
resources, task specs, the control block, and the worker process (``engine.worker``).
"""
