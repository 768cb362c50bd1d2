"""kecil route: the small model answers what it can and escalates what it cannot, only where allowed and never with private data (redact.py)."""
