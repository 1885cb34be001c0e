"""Internal operations: drain devices, move nodes, incident timelines and SLA reports."""
