"""The web console at `/ui/`: server-rendered pages (Jinja2) over the control-plane API's own
functions, with two small vendored scripts (htmx for the live parts, uPlot for the charts).

`pages.install(app)` adds it to an app; `session.py` holds the sign-in cookie and CSRF rules.
"""
