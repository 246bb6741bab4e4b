"""mobile-model: labelled images -> small, verified TFLite model, checked on emulated ARM devices."""

__version__ = "0.1.0"
