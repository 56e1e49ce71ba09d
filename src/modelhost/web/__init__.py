"""HTTP plumbing the control-plane API (`api/`) and the gateway (`gateway/`) share: who is
calling (`auth.py`), how errors are rendered (`errors.py`), the middlewares in front of both
(auth throttling, body limits) and the OpenAPI/docs helpers. Nothing here knows a route."""
