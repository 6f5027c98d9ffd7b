"""What certkeeper shows monitoring systems: Prometheus metrics and the daemon's HTTP listener (:mod:`.metrics`)."""
