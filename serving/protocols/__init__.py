"""Wire protocols served next to ``/predict``: MLflow's scoring protocol and KServe v2.

Each protocol module exposes ``router`` (an ``APIRouter``) and pure functions with no HTTP in
them: request parsing into records keyed by the model's input columns, validation against
those columns, and response formatting. Errors are rendered in each protocol's own body by
the router itself, never by the app-wide handlers.
"""
