"""The API process: admission, routing, request handles, the replica table and the launchers
that start stage workers."""
