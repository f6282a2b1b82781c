"""Shared test support: samples and scanners that several test folders use."""
