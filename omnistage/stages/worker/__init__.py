"""A stage replica's process: the worker loop, input gathering and the ``Stage`` contract every
kind implements."""
