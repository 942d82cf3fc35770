"""The foundation every layer may use: errors, atomic writes, the package's constants."""

__version__ = "0.2.0"  # kept equal to pyproject.toml's version (tested)

CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # label 0, label 1
