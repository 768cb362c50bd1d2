"""Small model first, escalate when allowed (kecil route)."""
