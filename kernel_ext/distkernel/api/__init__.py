"""The public API (Ray's names): init / shutdown, put / get / wait / cancel, remote
functions, actors, and Ray's utilities. Reached through ``import distkernel``."""
