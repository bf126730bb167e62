"""edged: the on-device daemon. Open Inference Protocol v2 over HTTP (what Triton and KServe
speak, so `tritonclient[http]` works unchanged), a bounded queue with dynamic batching,
the governor on its own tick, Prometheus metrics."""
