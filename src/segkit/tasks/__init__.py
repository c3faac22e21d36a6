"""What the entry scripts run: each task takes a composed config and returns plain metrics."""
