"""kecil serve: a private, OpenAI-compatible HTTP server for the models on this machine."""
