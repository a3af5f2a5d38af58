"""What the whole house shares to read and write: atomic file writes, the COCO RLE mask codec."""
