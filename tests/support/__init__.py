"""Shared test support: samples, scanners and fakes that several test folders (and bench/) use."""
