"""The HTTP API of ModelMint: OpenAI-compatible routes, admin routes, API-key auth.

    fastpath  the paid model routes, answered straight from ASGI before FastAPI
    deps      who calls: the API key or the admin token of a request
    routes/   the other routes (admin, billing, payments, self-service, feedback, health)
    api       the routers and docs pages mounted together, and the OpenAPI document
    api_docs  the offline /docs and /redoc pages

It builds on the composition root (``modelmint.platform``) and the shared web pieces
(``modelmint.web``); the whole app, with the dashboard and the portal beside the API,
is assembled in ``modelmint.app``.
"""
