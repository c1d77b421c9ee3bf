"""Retraining the intent model: simulate -> train -> evaluate -> export (`python -m training`)."""
