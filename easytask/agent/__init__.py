"""The resident agent: dials out to the scheduler and serves SSH on that connection."""
