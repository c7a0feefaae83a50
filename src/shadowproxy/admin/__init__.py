"""The admin plane: one aiohttp app for health, readiness, metrics, routes, feedback,
reload and experiments, served by a single process or by the ``serve --workers N``
supervisor (which merges its workers' metrics and passes the rest through).
"""
