"""Engines behind the built-in stage kinds (declared in ``omnistage.graph.kinds``)."""
