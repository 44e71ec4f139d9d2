"""Demo data, so that a new installation has something to show: the whole feature here.

    names    the demo organisations' prefix and the time-travel headers, shared by
             the client and the server
    billing  the demo price book and plans, and the two demo customers `modelmint up` seeds
    traffic  labelled demo customers and a month of realistic requests, as a seeded plan
    replay   that plan sent through the real HTTP API (`modelmint demo traffic`)
    clock    the server's side of time travel: when a demo request asks to be metered,
             and whether it may

The platform holds a ``clock.DemoClock`` and the paid routes ask it once per request;
the CLI calls ``billing`` and ``replay``. Nothing outside the CLI, the composition root
and the gateway imports this package, and it imports none of them.
"""
