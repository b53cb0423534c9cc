"""Adapters from each built-in stage kind (declared in ``omnistage.graph.kinds``) to its engine."""
