"""What a customer may see of its own account: usage, spend, credit, budgets and limits.

Every function here takes the organisation from the caller's credentials (an API key
or a portal session), never from the request, so nothing of another organisation can
be asked for.
"""
