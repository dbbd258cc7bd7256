"""Batch scoring of a file through a logged model; `score.run` is the one entry."""
