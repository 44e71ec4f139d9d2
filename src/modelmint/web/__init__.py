"""HTTP pieces shared by the API, the dashboard and the portal, and by none of them owned.

    responses   orjson JSON, a file download, a server-sent event stream that is always closed
    errors      every error in the OpenAI shape, mapped once for the whole app
    middleware  request id, header and body size limits, access log, HTTP metrics (raw ASGI)
    throttle    failed sign-ins counted per client address

Nothing here knows the platform (``modelmint.platform``) or any page: the composition
root and the three web faces build on this package, never the other way round.
"""
