"""The HTTP side: the Runware webhook receiver, the jobs API, health and metrics."""
