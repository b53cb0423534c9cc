"""``omnistage bench``: a load client for a running omnistage (or any OpenAI-compatible) server."""
