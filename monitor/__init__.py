"""The streaming daemon: sources, pipeline, alarms, sinks, the asd-monitor CLI."""
