"""The use cases the doors (API, console, CLI) call: submit, kill, schedule, accept, export."""
