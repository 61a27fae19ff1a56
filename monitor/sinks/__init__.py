"""Event sinks: MQTT, Prometheus, TUI, JSONL, and the log every daemon has."""
