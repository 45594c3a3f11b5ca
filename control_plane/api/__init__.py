"""HTTP API: flask-smorest blueprints that parse, call one service, and return."""
