"""Prometheus for emopipe: the scrape config (prometheus.yml), a local server runner and a dashboard checker."""
