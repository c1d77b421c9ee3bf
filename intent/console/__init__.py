"""The console: a worker-served page to watch intent changes live, see why a shopper got what, and
manage webhook subscriptions (`/console/`; see the README's Console section)."""

from intent.console.routes import Console

__all__ = ["Console"]
