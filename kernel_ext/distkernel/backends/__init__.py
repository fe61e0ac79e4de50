"""Engines behind one interface (``base.Engine``): ``local`` runs the cluster in this
machine's processes."""
