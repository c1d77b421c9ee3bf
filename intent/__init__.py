"""intent: detect shifts in shopper intent from a stream of commerce events.

The data flow, one module per stage: events -> window -> features -> model -> detector ->
(app emits IntentChanged) -> suggest -> webhooks.
"""

__version__ = "0.1.0"
