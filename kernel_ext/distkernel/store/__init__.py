"""How values travel and where they are kept: our pickler and serializer registry, the
report on what cannot travel, the notebook-class cache, the object store, the arena
of shared memory, spilling, and the names of the cluster's files (``reaper``).
"""
