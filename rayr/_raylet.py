"""Where Ray programs import some core types from (``from ray._raylet import
ObjectRefGenerator``); the same classes as ``rayr``'s own."""

from __future__ import annotations

from rayr.object_ref import ObjectRef
from rayr.streaming import DynamicObjectRefGenerator, ObjectRefGenerator

# Ray's older name for a streaming generator's handle
StreamingObjectRefGenerator = ObjectRefGenerator

__all__ = ["DynamicObjectRefGenerator", "ObjectRef", "ObjectRefGenerator", "StreamingObjectRefGenerator"]
