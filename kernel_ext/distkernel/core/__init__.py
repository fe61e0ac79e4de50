"""The bottom layer: what every other layer and every process shares.

Messages (``protocol``), ``ObjectRef``, the error tree, configuration, task records,
wire framing, Ctrl-C deferral, and which client this process talks to. Imports
nothing else of distkernel.
"""
