"""Ports: typing.Protocol interfaces the application depends on."""

from .clock import Clock

__all__ = ["Clock"]
