"""HTTP routes, composed into the app in one place (``modelmint.gateway.api``)."""
