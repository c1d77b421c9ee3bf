"""Delivery of intent changes to subscribers: signed webhooks that are retried until received.

signing.py        Standard Webhooks signatures (what receivers verify)
targets.py        which URLs may be called (no loopback, private or metadata addresses)
subscriptions.py  subscriptions, event-sourced on a compacted topic that every worker follows
api.py            the HTTP API to manage them
delivery.py       attempts, retries on the specification's schedule, dead letters
"""
