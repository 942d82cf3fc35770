"""The foundation every layer may use: errors, atomic writes, the package's constants."""

__version__ = "0.1.0"

CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # label 0, label 1
