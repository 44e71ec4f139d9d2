"""Collecting money: a payment provider boundary, its Stripe adapter, and the rules
for charging invoices and top-ups, applying the provider's events once, and dunning."""
