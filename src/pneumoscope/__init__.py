"""pneumoscope: pneumonia detection on chest X-rays, from image folders to honest numbers."""

__version__ = "0.1.0"

CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # label 0, label 1
