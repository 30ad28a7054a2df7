"""Replica engine: R SGD replicas from the same initial weights as one tensor dimension; streaming statistics."""
