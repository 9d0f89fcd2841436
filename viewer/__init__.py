"""Self-contained HTML views of episodes and runs (no server, no network, no CDN)."""
