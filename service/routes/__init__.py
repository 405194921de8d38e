"""HTTP and WebSocket routes, one module per resource (jobs, streams, health, the web page)."""
