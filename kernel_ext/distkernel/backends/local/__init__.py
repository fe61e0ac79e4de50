"""The local engine: a worker pool and a shared-memory object store in this process."""
