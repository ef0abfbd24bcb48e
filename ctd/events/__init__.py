"""What happens on the node, as a stream: GET /1.0/events (docs/api.md, "Events")."""
