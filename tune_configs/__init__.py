"""User-facing YAML presets and Ray Tune sweep files (loaded strictly)."""
