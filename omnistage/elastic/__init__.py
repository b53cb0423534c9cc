"""Elastic allocation: the controller's policy, its runtime and a cluster simulator."""
