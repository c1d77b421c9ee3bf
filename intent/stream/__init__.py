"""The stream worker's paths, each readable and testable alone; `intent.app` builds and wires them.

- `detection`: input events -> windows -> model -> detector -> intent changes (and dead letters),
  with the commit guarantee;
- `delivery`: intent changes -> policy -> subscriptions -> webhook deliveries;
- `routes`: what the worker answers over HTTP;
- `tables`: the worker's keyed state in Faust tables.
"""
