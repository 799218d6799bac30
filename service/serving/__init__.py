"""Serving: inputs, preprocessing, batching, dispatch to replicas, the model registry, devices, adapters."""
