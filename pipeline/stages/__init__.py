"""Build stages. Each is a function from input artifacts + frozen config to new artifacts."""
