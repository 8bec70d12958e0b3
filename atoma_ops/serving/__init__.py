"""The node's serving side: inference engines, compute-unit metering, stack history, replay, the HTTP server."""
