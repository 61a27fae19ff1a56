"""Event sinks: MQTT, Prometheus, TUI, JSONL."""
