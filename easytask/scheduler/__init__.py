"""The scheduler: agent registry, job execution, log writer, live hub."""
