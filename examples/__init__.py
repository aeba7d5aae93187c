"""Example configs, shipped as package data so the embedded default (minigate.yaml) travels with the wheel."""
