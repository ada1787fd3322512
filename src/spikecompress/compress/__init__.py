"""Compression: the Method protocol, Session, layer selection, schedules and the METHODS table."""

from spikecompress.compress.method import Context, Method
from spikecompress.compress.parametrize import bake_, is_plain
from spikecompress.compress.registry import METHODS
from spikecompress.compress.schedules import SCHEDULES, schedule_value
from spikecompress.compress.session import Session, attach
from spikecompress.compress.targets import select

__all__ = [
    "METHODS", "SCHEDULES", "Context", "Method", "Session", "attach", "bake_", "is_plain",
    "schedule_value", "select",
]
