"""`make bench`: the pipeline's speed, CPU and latency, each a ratio to a floor of the same run."""
