"""Runners: the local streaming engine (and, with the scale issue, Ray)."""
