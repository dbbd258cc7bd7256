"""What the training side and the server both rely on, defined once.

Serving may import this module and nothing else from ``pipeline`` (an import-linter contract in
``pyproject.toml``), so it imports only the standard library and light dependencies.
"""
