"""Command-line flags of keras-kd: defined and validated once here, turned into a Config."""
