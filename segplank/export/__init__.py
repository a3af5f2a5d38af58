"""Writers own the formats; the detection structure owns only arrays."""
