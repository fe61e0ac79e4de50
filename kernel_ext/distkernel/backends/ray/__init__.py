"""The Ray engine: the same API on a Ray cluster (``init(address="ray" | "auto" | "host:port" |
"ray://host:port")``). The only part of distkernel that imports ``ray``."""
