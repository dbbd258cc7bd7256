"""Serve the registered MLflow model over REST.

Importing this package has no side effects: no tracking URI is set, no logging is
configured and no model is loaded until :func:`serving.app.create_app` runs its lifespan.
"""

__all__: list[str] = []
