"""Helpers shared by the tests: data locations, tiny model configurations, training configs."""
