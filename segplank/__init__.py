"""segplank: from a cruise folder of in situ plankton frames to measured, classified objects."""
__version__ = "0.1.0"
