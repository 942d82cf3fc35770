"""Input bounds shared by every decoder (raster and DICOM)."""

MAX_PIXELS = 100_000_000  # refuse decompression bombs: 10k x 10k is already larger than any CXR
