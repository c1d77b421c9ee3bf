"""The read side: a shopper's current intent and timeline on request, from the worker that owns her.

`latest.py` keeps each shopper's last intent changes (a table the delivery agent writes), `answers.py`
builds the answers from the windows, the model and those changes under the consent and holdout rules
of webhooks, `routing.py` finds the worker that owns a shopper and forwards to it, `api.py` serves
the routes, and `audit.py` writes who read which shopper.
"""
