"""One paid request, from admission to a durable usage record, with no web framework in it.

    protocol        the OpenAI-compatible request bodies (pydantic), as clients send them
    service         ``InferenceService``: route, admit (rate limits, spend), run the backend
                    with fallback, meter and charge before the answer completes
    envelope        the OpenAI response bodies and stream chunks around a backend's output
    metered_stream  a streamed answer that is metered however it ends
    transcript      a streamed answer put back together as one, for an opted-in sample
    inputs          classifier and recommender inputs, decoded and checked one by one
    key_cache       API keys by secret, trusted for a short TTL

The composition root (``modelmint.platform``) builds the service and the key cache; the
gateway's routes call them. Nothing here imports either.
"""
