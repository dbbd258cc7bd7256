"""Training side of the project: validate data, train, evaluate, register and gate models."""
